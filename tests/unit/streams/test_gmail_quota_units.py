"""Units charged in the last quota window, per user: the limiter's window and the metric."""

from __future__ import annotations

from prometheus_client import REGISTRY

from streams.stages.gmail.client import GmailClient, GmailClientConfig
from streams.stages.gmail.limiter import QuotaLimiter


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


async def test_units_in_window_counts_only_the_last_window() -> None:
    vt = VirtualTime()
    limiter = QuotaLimiter(
        units_per_window=6000, window_seconds=60.0, clock=vt.clock, sleep=vt.sleep
    )
    await limiter.acquire(5)
    vt.now = 30.0
    await limiter.acquire(100, 20)
    assert limiter.units_in_window() == 105
    vt.now = 60.5  # the first charge is more than a window old
    assert limiter.units_in_window() == 100
    vt.now = 91.0
    assert limiter.units_in_window() == 0


async def test_each_users_limiter_is_exported_as_inboxflow_gmail_user_units() -> None:
    client = GmailClient(GmailClientConfig(api_root="http://127.0.0.1:9/"))
    try:
        limiter = client.limiter("quota-metric@x.test")
        await limiter.acquire(7)
        value = REGISTRY.get_sample_value(
            "inboxflow_gmail_user_units", {"user": "quota-metric@x.test"}
        )
        assert value == 7.0
    finally:
        client.close()
