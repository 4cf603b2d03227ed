"""The fault campaign at CI size: every kind of fault, then the independent invariant check.

``inboxflow chaos`` starts a stack of its own (it stops, kills and pauses the broker and
Postgres), so this test leaves the session's services alone. After the campaign passes, the
test tampers with what the pipeline wrote and runs the checker again: it must notice each
kind of damage, or its clean verdict would prove nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from inboxflow.chaos.campaign import CampaignConfig, run_campaign
from inboxflow.chaos.invariants import Checker
from inboxflow.chaos.plan import FaultKind

pytestmark = pytest.mark.chaos

CI_CAMPAIGN = CampaignConfig(
    seed=20261201,
    users=2,
    messages=20,
    new_mail=12,
    faults=len(FaultKind) + 3,  # every kind once (each scale-out brings its scale-in), then more
    window=45.0,
    settle_timeout=480.0,
)


def cache_dir() -> Path:
    return Path(os.environ.get("INBOXFLOW_STATE_DIR", "~/.cache/inboxflow")).expanduser()


async def tamper_and_recheck(checker: Checker, database_url: str) -> list[str]:
    """Damage one row of each kind the checker guards; return the checker's new verdict."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = conn.execute(
            "SELECT id FROM jobs WHERE kind = 'embed' AND status = 'done' ORDER BY id LIMIT 2"
        ).fetchall()
        conn.execute(  # a job moved back from done (what a lost version guard would do)
            "UPDATE jobs SET status = 'processing', version = version - 1 WHERE id = %s",
            done[0],
        )
        conn.execute("DELETE FROM jobs WHERE id = %s", done[1])  # a job lost
        conn.execute(  # a sighting counted twice
            "UPDATE contacts SET from_count = from_count + 1 "
            "WHERE (user_id, address) IN (SELECT user_id, address FROM contacts "
            "WHERE from_count > 0 ORDER BY 1, 2 LIMIT 1)"
        )
    return (await checker.check()).violations


def test_a_seeded_campaign_of_every_fault_kind_breaks_no_invariant() -> None:
    after_tampering: list[str] = []

    async def inspect(checker: Checker, database_url: str) -> None:
        after_tampering.extend(await tamper_and_recheck(checker, database_url))

    report = run_campaign(CI_CAMPAIGN, cache_dir(), inspect=inspect)

    assert report.violations == [], "\n".join([*report.violations, *report.timeline])
    assert report.settled
    assert set(report.faults_injected) == {kind.value for kind in FaultKind}
    assert report.bombs == CI_CAMPAIGN.users
    assert report.poison == 1
    assert report.new_mail == CI_CAMPAIGN.new_mail
    assert report.messages > report.bombs
    lettered = sum(report.findings["dead_letters"].values())
    assert lettered >= report.bombs + report.poison

    text = "\n".join(after_tampering)
    assert "left processing" in text, text
    assert "backwards: UPDATE" in text, text
    assert "backwards: DELETE" in text, text
    assert "is None" in text, text  # the deleted row: a message without its embed job
    assert "exactly once: contact" in text, text
