"""``inboxflow bench legacy --json`` at tiny scale: the old polling design against inboxflow.

Prints both sides' figures; asserts only that they are consistent (every legacy message ends
done or failed, counts add up), never a speed. The faults are milder than the command's
defaults so that both sides settle within the test's time at this scale.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.stack import Stack
from inboxflow.bench import legacy_design as design
from inboxflow.bench.legacy_measure import create_database, drop_database, percentile

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")
USERS, MESSAGES = 1, 12


def _check_side(side: dict[str, Any]) -> None:
    assert side["settled"], side
    # What a full sync lists: the generated messages outside spam and trash.
    assert 0 < side["messages"] <= USERS * MESSAGES
    assert side["messages_done"] + side["messages_failed"] == side["messages"]
    assert sum(side["jobs_by_status"].values()) == side["jobs"]
    assert side["p50_seconds"] <= side["p99_seconds"]
    assert side["gmail_units_per_message"] > 0
    assert side["db_transactions_per_message"] > 0
    assert side["cpu_seconds_per_1000_messages"] > 0


@pytest.mark.timeout(1200)
def test_legacy_design_against_inboxflow(stack: Stack) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "DATABASE_URL": stack.database_url,
    }
    argv = [INBOXFLOW, "bench", "legacy", "--users", str(USERS), "--messages", str(MESSAGES)]
    argv += ["--gmail-429", "0.05", "--gmail-5xx", "0.05", "--embedding-throttle", "0.5"]
    completed = subprocess.run(  # noqa: S603
        [*argv, "--timeout", "300", "--json"], env=env, capture_output=True, timeout=1100
    )
    assert completed.returncode == 0, completed.stderr.decode()[-3000:]
    result = json.loads(completed.stdout)
    legacy, flow = result["legacy"], result["inboxflow"]
    print(json.dumps({"legacy": legacy, "inboxflow": flow}, indent=1))
    _check_side(legacy)
    _check_side(flow)
    assert legacy["messages"] == flow["messages"]  # the same mailboxes
    # The old design: a sync job plus five jobs a message, each done or failed, nothing left.
    assert legacy["jobs"] == USERS + 5 * legacy["messages"]
    assert set(legacy["jobs_by_status"]) <= {"done", "failed"}
    assert legacy["jobs_failed_or_dead"] == legacy["jobs_by_status"].get("failed", 0)
    # Every transaction of its workers held at least one counted statement.
    assert legacy["db_statements_per_message"] >= legacy["db_transactions_per_message"]
    assert set(flow["jobs_by_status"]) <= {"done", "error", "dead"}


def test_a_failed_parent_fails_its_blocked_descendants(stack: Stack) -> None:
    """The dependency manager's cascade, on the old design's own schema."""
    database = create_database(stack.database_url, "legacy_cascade")
    try:
        design.create_schema(database)
        with psycopg.connect(database, autocommit=True) as conn:
            for kind, status in [("fetch", "failed"), ("normalize", "blocked")]:
                conn.execute(
                    design.INSERT_JOB,
                    {"kind": kind, "user_id": "u", "message_id": "m", "thread_id": None,
                     "status": status},
                )  # fmt: skip
            for kind in ("extract", "embed", "insight"):
                conn.execute(
                    design.INSERT_JOB,
                    {"kind": kind, "user_id": "u", "message_id": "m", "thread_id": None,
                     "status": "blocked"},
                )  # fmt: skip
            conn.execute(design.RELEASE_BLOCKED)
            # Each pass fails one more generation: normalize, then extract and embed, then insight.
            for _ in range(3):
                conn.execute(design.FAIL_BLOCKED)
            statuses = dict(conn.execute("SELECT kind, status FROM legacy_jobs").fetchall())
    finally:
        drop_database(stack.database_url, database)
    assert statuses == dict.fromkeys(design.MESSAGE_KINDS, "failed")


def test_backoff_and_percentiles() -> None:
    assert [design.backoff_seconds(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.99) == 4.0
    assert percentile([], 0.5) == 0.0
