"""The fetch stage against the Gmail emulator: a batch that partly fails keeps what it fetched."""

from __future__ import annotations

from datetime import UTC, datetime

from devstack.gmail_emulator import FaultConfig
from schemas.errors import RateLimitedError, TransientError
from schemas.models import GmailMessageFetched, MessageDiscovered
from schemas.serde import serde_for
from streams.runtime.stage import Record
from streams.stages.fetch import FetchStage
from streams.stages.gmail.client import GmailClient, GmailClientConfig
from tests.integration.conftest import EmulatorFactory

USER = "fetch@inboxflow.test"


async def test_messages_fetched_stand_when_others_of_the_batch_fail(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    emu = gmail_emulator_factory()
    emu.add_user(USER, messages=16, seed=5)
    ids = emu.message_ids(USER)
    emu.set_faults(FaultConfig(rate_429=0.3, rate_500=0.2, throttle_seconds=0.2, seed=3))
    serde = serde_for(None)
    client = GmailClient(GmailClientConfig(api_root=emu.url, max_attempts=2))
    stage = FetchStage(serde=serde, gmail=client, fetched_topic="fetched", timeout=60)
    now = datetime.now(UTC)
    records = [
        Record(
            "discovered",
            0,
            offset,
            0,
            USER.encode(),
            serde.encode(
                MessageDiscovered(
                    user_id=USER,
                    message_id=message_id,
                    thread_id="",
                    sync_id="s",
                    discovered_at=now,
                )
            ),
        )
        for offset, message_id in enumerate(ids)
    ]
    try:
        outcomes = await stage.process(records)
    finally:
        client.close()

    done = [o for o in outcomes if o.error is None]
    failed = [o for o in outcomes if o.error is not None]
    assert done, "some messages came through"
    assert failed, "some ran out of retries"
    assert all(isinstance(o.error, TransientError | RateLimitedError) for o in failed)
    fetched = {serde.decode(o.outputs[0].value, GmailMessageFetched).message_id for o in done}
    assert len(fetched) == len(done)
    assert emu.accounting.calls_by_method["users.messages.get"] == len(done), "each fetched once"
