"""Backfill arithmetic (``inboxflow backfill --dry-run``) and the backfill lane's quota share."""

from __future__ import annotations

import asyncio

import pytest

from inboxflow.backfill import (
    BackfillProgress,
    estimate_backfill,
    format_duration,
    total_estimate,
)
from inboxflow.settings import Settings
from inboxflow.wiring import BACKFILL_LANE, Resources, build_stages, catalogue_from
from streams.stages.fetch import FetchStage
from streams.stages.gmail.client import LANE_BURST_FRACTION, GmailClient, GmailClientConfig
from streams.stages.gmail.costs import CostTable
from streams.stages.sync import SyncStage

COSTS_2026 = CostTable("2026")


def test_a_100000_message_mailbox_at_half_the_2026_ceiling() -> None:
    estimate = estimate_backfill(
        "a@x.test", 100_000, costs=COSTS_2026, user_units_per_minute=6_000, share=0.5
    )

    # 1 getProfile + 200 list pages x 5 + 100,000 gets x 20
    assert (estimate.list_calls, estimate.get_calls) == (200, 100_000)
    assert estimate.units == 1 + 1_000 + 2_000_000
    # 3,000 units a minute: 667 minutes, about 11 h (a full ceiling would take half that).
    assert estimate.seconds == pytest.approx(2_001_001 / 3_000 * 60)
    assert format_duration(estimate.seconds) == "11h 07m"


def test_legacy_costs_and_a_whole_ceiling() -> None:
    estimate = estimate_backfill(
        "a@x.test",
        1_001,
        costs=CostTable("legacy"),
        user_units_per_minute=15_000,
        share=1.0,
    )

    assert estimate.list_calls == 3  # 500 + 500 + 1
    assert estimate.units == 1 + 3 * 5 + 1_001 * 5
    assert estimate.seconds == pytest.approx(5_021 / 15_000 * 60)


def test_an_empty_mailbox_still_costs_its_profile_and_one_page() -> None:
    estimate = estimate_backfill(
        "a@x.test", 0, costs=COSTS_2026, user_units_per_minute=6_000, share=0.5
    )

    assert (estimate.messages, estimate.list_calls, estimate.units) == (0, 1, 6)


@pytest.mark.parametrize(("messages", "share"), [(-1, 0.5), (10, 0.0), (10, 1.5)])
def test_nonsense_is_refused(messages: int, share: float) -> None:
    with pytest.raises(ValueError, match=r"mailbox|share"):
        estimate_backfill(
            "a@x.test", messages, costs=COSTS_2026, user_units_per_minute=6_000, share=share
        )


def test_backfills_run_side_by_side_but_share_the_message_cap() -> None:
    small = estimate_backfill(
        "a@x.test", 600, costs=COSTS_2026, user_units_per_minute=6_000, share=0.5
    )
    large = estimate_backfill(
        "b@x.test", 9_000, costs=COSTS_2026, user_units_per_minute=6_000, share=0.5
    )

    total = total_estimate([small, large], messages_per_second=10)

    assert (total.messages, total.units) == (9_600, small.units + large.units)
    assert total.quota_seconds == large.seconds  # each user spends its own quota
    assert total.pace_seconds == 960.0
    assert total.seconds == max(large.seconds, 960.0)
    assert total_estimate([], messages_per_second=10).seconds == 0.0


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (44.2, "45s"), (200, "3m 20s"), (3_720, "1h 02m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_progress_is_done_when_every_listing_ended_and_every_message_is_final() -> None:
    listing = BackfillProgress(discovered=500, normalized=500, listings_done=0, backfills=1)
    fetching = BackfillProgress(discovered=1_000, normalized=900, gone=3, failed=2, backfills=1)
    done = BackfillProgress(
        discovered=1_000, normalized=990, gone=4, failed=6, listings_done=1, backfills=1
    )

    assert not listing.done
    assert fetching.finished == 905
    assert not fetching.done
    assert done.done


def test_the_backfill_lane_gets_its_share_of_each_users_ceiling() -> None:
    client = GmailClient(
        GmailClientConfig(
            user_units_per_window=2_000, window_seconds=10.0, lane_shares={"backfill": 0.25}
        )
    )
    try:
        lane = client.lane_limiter("backfill", "a@x.test")
        user = client.limiter("a@x.test")

        assert lane.rate == pytest.approx(user.rate * 0.25)
        assert lane.capacity == pytest.approx(500 * LANE_BURST_FRACTION)
        assert client.lane_limiter("backfill", "a@x.test") is lane
        assert client.lane_limiter("backfill", "b@x.test") is not lane
        with pytest.raises(KeyError, match="bulk"):
            client.lane_limiter("bulk", "a@x.test")
    finally:
        client.close()


def test_the_sync_group_runs_the_backfill_lane_beside_the_live_one() -> None:
    settings = Settings(backfill_quota_share=0.25, backfill_messages_per_second=4)
    catalogue = catalogue_from(settings)
    resources = Resources.from_settings(settings)
    try:
        stages = build_stages("sync", catalogue, resources)

        assert {topic: stage.name for topic, stage in stages.items()} == {
            catalogue.sync_requested.name: "sync",
            catalogue.message_discovered.name: "fetch",
            catalogue.backfill_requested.name: "backfill",
            catalogue.backfill_discovered.name: "backfill-fetch",
        }
        live = stages[catalogue.message_discovered.name]
        lane = stages[catalogue.backfill_discovered.name]
        assert isinstance(live, FetchStage)
        assert isinstance(lane, FetchStage)
        assert (live.lane, live.pace) == (None, None)
        assert lane.lane == BACKFILL_LANE
        assert lane.pace is not None
        assert lane.pace.rate == pytest.approx(4.0)
        assert resources.gmail.config.lane_shares == {BACKFILL_LANE: 0.25}
        # The lane's listing writes its pages and ids to the lane's own topics.
        listing = stages[catalogue.backfill_requested.name]
        assert isinstance(listing, SyncStage)
        assert listing.backfill
        assert (listing.requests_topic, listing.discovered_topic) == (
            catalogue.backfill_requested.name,
            catalogue.backfill_discovered.name,
        )
    finally:
        asyncio.run(resources.close())
