"""The batch endpoint: per-part statuses, the 100-part limit, the client riding out failures."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from googleapiclient import discovery_cache
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

from devstack.gmail_emulator import FaultConfig, QuotaConfig
from schemas.errors import StageTimeoutError, TransientError
from streams.stages.gmail.client import (
    FetchedMessage,
    FetchNeed,
    GmailClient,
    GmailClientConfig,
    MessageFailed,
    MessageGone,
)
from tests.integration.conftest import EmulatorFactory

USER = "batch@inboxflow.test"


def _service(url: str) -> Any:
    doc = json.loads(discovery_cache.get_static_doc("gmail", "v1"))
    doc["rootUrl"] = url
    doc.pop("mtlsRootUrl", None)
    return build_from_document(doc, credentials=AnonymousCredentials())


def test_batch_parts_get_their_own_status(gmail_emulator_factory: EmulatorFactory) -> None:
    emu = gmail_emulator_factory(quota=QuotaConfig(user_concurrency=4))
    emu.add_user(USER, messages=6, seed=1)
    ids = emu.message_ids(USER)
    service = _service(emu.url)
    results: dict[str, tuple[Any, HttpError | None]] = {}
    batch = service.new_batch_http_request(
        callback=lambda rid, resp, exc: results.update({rid: (resp, exc)})
    )
    for message_id in [*ids[:3], "0000000000000bad", *ids[3:5]]:
        batch.add(service.users().messages().get(userId=USER, id=message_id, format="minimal"))
    batch.execute()
    service.close()
    statuses = [
        200 if results[str(i)][1] is None else results[str(i)][1].status_code for i in range(1, 7)
    ]
    assert statuses == [200, 200, 200, 404, 429, 429]  # parts 5-6 exceed 4 concurrent requests
    assert "concurrent" in str(results["5"][1])


def test_more_than_100_parts_is_rejected_whole(gmail_emulator_factory: EmulatorFactory) -> None:
    emu = gmail_emulator_factory()
    emu.add_user(USER, messages=1, seed=1)
    service = _service(emu.url)
    batch = service.new_batch_http_request()
    for _ in range(101):
        batch.add(service.users().getProfile(userId=USER))
    with pytest.raises(HttpError) as caught:
        batch.execute()
    service.close()
    assert caught.value.status_code == 400
    assert "Received: 101, Limit: 100" in str(caught.value)


async def test_client_retries_failed_parts_and_reports_deleted(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    emu = gmail_emulator_factory(
        faults=FaultConfig(rate_500=0.15, rate_503=0.1, vanish_rate=0.05, seed=11)
    )
    emu.add_user(USER, messages=120, seed=2)
    client = GmailClient(GmailClientConfig(api_root=emu.url, max_attempts=12))
    try:
        refs = await client.list_all_message_ids(USER, include_spam_trash=True)
        emu.set_faults(FaultConfig(rate_500=0.15, rate_503=0.1, vanish_rate=0.05, seed=11))
        outcomes = await client.fetch_messages(USER, refs, need=FetchNeed.RAW)
    finally:
        client.close()
    seen = emu.accounting
    assert seen.statuses.get(500, 0) > 0
    assert seen.statuses.get(503, 0) > 0
    assert set(outcomes) == {r.id for r in refs}
    gone = {i for i, o in outcomes.items() if isinstance(o, MessageGone)}
    assert gone
    assert gone == {r.id for r in refs} - set(emu.message_ids(USER))


async def test_retries_run_out_with_the_classified_error(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    emu = gmail_emulator_factory()
    emu.add_user(USER, messages=3, seed=3)
    ids = emu.message_ids(USER)
    emu.set_faults(FaultConfig(rate_500=1.0))
    client = GmailClient(GmailClientConfig(api_root=emu.url, max_attempts=3))
    try:
        with pytest.raises(TransientError, match="500 backendError"):
            await client.fetch_messages(USER, ids, need=FetchNeed.RAW)
    finally:
        client.close()
    assert emu.accounting.statuses[500] == 3 * 3  # three parts, three tries each


async def test_a_message_whose_retries_run_out_fails_alone_and_the_fetched_are_kept(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    """Half the calls fail and no call is retried: the other half come back, fetched once."""
    emu = gmail_emulator_factory()
    emu.add_user(USER, messages=20, seed=4)
    ids = emu.message_ids(USER)
    emu.set_faults(FaultConfig(rate_500=0.5, seed=9))
    client = GmailClient(GmailClientConfig(api_root=emu.url, max_attempts=1))
    try:
        outcomes = await client.fetch_messages(USER, ids, need=FetchNeed.RAW)
    finally:
        client.close()

    assert set(outcomes) == set(ids)
    fetched = [o for o in outcomes.values() if isinstance(o, FetchedMessage)]
    failed = [o for o in outcomes.values() if isinstance(o, MessageFailed)]
    assert fetched, "some calls got through"
    assert failed, "some calls failed"
    assert len(fetched) + len(failed) == len(ids)
    assert all(isinstance(o.error, TransientError) for o in failed)
    assert emu.accounting.statuses[200] == len(fetched)  # nothing fetched twice
    assert emu.accounting.statuses[500] == len(failed)


async def test_parts_refused_behind_a_throttle_do_not_spend_their_attempts(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    """A 429 holds the user until its time, so Gmail refuses the rest of the batch too; those
    parts were never tried, and a client that counted them failed most of a batch at once."""
    emu = gmail_emulator_factory()
    emu.add_user(USER, messages=20, seed=6)
    ids = emu.message_ids(USER)
    emu.set_faults(FaultConfig(rate_429=0.2, throttle_seconds=0.05, seed=5))
    client = GmailClient(GmailClientConfig(api_root=emu.url, max_attempts=3))
    try:
        outcomes = await client.fetch_messages(USER, ids, need=FetchNeed.RAW)
    finally:
        client.close()

    failed = [o for o in outcomes.values() if isinstance(o, MessageFailed)]
    # Each message is drawn a 429 of its own at most three times in a row: 0.2^3 = 0.8 %.
    assert len(failed) <= 2, [o.error for o in failed]
    assert emu.accounting.throttled.get("injected", 0) > len(ids) // 10, "throttles happened"


async def test_past_its_deadline_a_fetch_stops_and_frees_the_users_slots(
    gmail_emulator_factory: EmulatorFactory,
) -> None:
    emu = gmail_emulator_factory(faults=FaultConfig(latency_ms=2000, latency_sigma=0.01))
    emu.add_user(USER, messages=5, seed=7)
    ids = emu.message_ids(USER)
    client = GmailClient(GmailClientConfig(api_root=emu.url))
    try:
        started = time.monotonic()
        with pytest.raises(StageTimeoutError, match="out of time"):
            await client.fetch_messages(USER, ids, need=FetchNeed.RAW, deadline=started + 0.5)
        assert time.monotonic() - started < 1.9, "the deadline, not the slow batch, ended it"
        assert client.limiter(USER).in_flight == 0, "the abandoned batch's slots came back"
    finally:
        client.close()
