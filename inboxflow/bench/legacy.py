"""``inboxflow bench legacy``: the old polling job system against inboxflow, same work, same faults.

**The old design** (``legacy_design``), modelled on what it was: a Postgres jobs table polled by
4 workers per kind (sync, fetch, normalize, extract, embed, insight; each kind its own process,
the workers asyncio tasks with a connection each), ``SELECT ... FOR UPDATE SKIP LOCKED``
claims, a dependency manager that releases a blocked job when its parents are done and fails
it when one failed, retries with exponential backoff (1, 2, 4, 8 s, capped at 10 s, the
Retry-After of a 429 not consulted), one 3-minute timeout for every kind, 5 attempts, then
``failed``. Choices made so as not to handicap it: a 1 s poll interval that applies only when
a poll found nothing (a worker that just finished a job polls again at once); a partial index
on ready jobs by (kind, run_after) and one on blocked jobs; the claim and the mark-running are
one statement; the dependency manager is two set-based updates a second, not a scan per job;
a job's result and its ``done`` are written in one transaction. Its work is inboxflow's own:
the same ``GmailClient`` (with its quota limiter, one per process, but ``max_attempts=1``
because retries were the job table's), ``normalized_event``, ``extract_contacts``,
``chunk_text`` with the OpenAI-compatible provider, ``UserInsights``. One job fetches one
message, as one job per message was the old unit of work.

**inboxflow**: every agent and sink as a process (``inboxflow.supervisor.start_all``), topics
under a fresh namespace on the configured Kafka, the embedding provider pointed at the
emulator. Its retry ladder is set to the old backoff (1, 2, 4, 8, 10 s) for every agent so that
both sides wait alike after a failure and the run stays short; its per-class attempt budgets
are its own (README, "Failure classes").

**Faults**, the same for both, on fresh emulators per side with the same seed: the Gmail
emulator answers 30 % of (sub-)requests 429 with a Retry-After of 1 s and 10 % 500/503; the
embedding emulator answers every second request 429 (it serves half the offered rate). The
Gmail emulator treats an injected 429 as Gmail treats a user-rate limit: the user is refused
until its Retry-After, so the parts of a batch request after the first injected 429 are refused
too, and so are the concurrent calls of other workers for that user. ``--gmail-429``,
``--gmail-5xx`` and ``--embedding-throttle`` change the mix.

**Figures** (``SideFigures``, one per side):

- messages/s: messages whose every job is done, over the time from the sync request to the
  last such message's last job (database timestamps; inboxflow's are the workers' event
  times). Both sides are started and ready (legacy: each process said so; inboxflow: every
  consumer group Stable) before the request.
- jobs failed or dead: legacy ``failed`` (cascades included); inboxflow ``error`` + ``dead``;
  as a share of all job rows of the run.
- p50/p99 from discovery to done: per finished message, from its first job's creation (the
  listing that discovered it) to its last job's end.
- database transactions per message: ``pg_stat_database.xact_commit + xact_rollback`` of the
  side's own database (each side gets a fresh one), read after every session to it ended
  (backends flush their counts when they exit), minus a reading taken after the schema or
  migrations were applied, minus the harness's own statements (one transaction each:
  autocommit). Everything a side's processes did counts, start-up and idle polls included
  (pg_stat_statements is not preloaded on the stack, so statements cannot be counted there).
  For the legacy side, ``db_statements_per_message`` also counts every SQL statement its
  workers sent (a counting wrapper; transaction control not included).
- Gmail units per message: the emulator's quota accounting over the run (each side its own
  emulator), throttled responses beside it.
- CPU-seconds per 1,000 messages: user + system time of each side's processes and their
  children (``/proc``), from ready to settled. The emulators run in the harness's own threads
  and count for neither side; Postgres's and Kafka's own CPU is not counted for either.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from inboxflow.bench.legacy_measure import percentile
from inboxflow.bench.legacy_sides import (
    Faults,
    Plan,
    SideRun,
    run_inboxflow_side,
    run_legacy_side,
)
from inboxflow.settings import Settings

__all__ = ["Faults", "LegacyBenchResult", "SideFigures", "run_legacy_bench"]

RETRY_DELAYS = (1, 2, 4, 8, 10)  # the old design's backoff, as inboxflow's ladder


@dataclass(frozen=True)
class SideFigures:
    """One side's figures (see the module docstring for how each is measured)."""

    messages: int
    messages_done: int
    messages_failed: int
    jobs: int
    jobs_failed_or_dead: int
    jobs_failed_percent: float
    jobs_by_status: dict[str, int]
    messages_per_second: float
    p50_seconds: float
    p99_seconds: float
    db_transactions_per_message: float
    db_statements_per_message: float | None
    gmail_units_per_message: float
    gmail_throttled_responses: int
    cpu_seconds_per_1000_messages: float
    elapsed_seconds: float
    settled: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LegacyBenchResult:
    """Both sides of one run, side by side."""

    users: int
    messages_per_user: int
    seed: int
    faults: Faults
    legacy: SideFigures
    inboxflow: SideFigures

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return asdict(self)


def side_figures(run: SideRun) -> SideFigures:
    """Turn one side's raw counts into per-message figures."""
    messages = max(run.messages, 1)
    jobs = sum(run.jobs_by_status.values())
    return SideFigures(
        messages=run.messages,
        messages_done=run.messages_done,
        messages_failed=run.messages - run.messages_done,
        jobs=jobs,
        jobs_failed_or_dead=run.jobs_failed,
        jobs_failed_percent=round(100 * run.jobs_failed / max(jobs, 1), 2),
        jobs_by_status=dict(sorted(run.jobs_by_status.items())),
        messages_per_second=round(run.messages_done / max(run.elapsed_seconds, 1e-3), 2),
        p50_seconds=round(percentile(run.latencies, 0.50), 2),
        p99_seconds=round(percentile(run.latencies, 0.99), 2),
        db_transactions_per_message=round(run.transactions / messages, 2),
        db_statements_per_message=(
            None if run.statements is None else round(run.statements / messages, 2)
        ),
        gmail_units_per_message=round(run.gmail_units / messages, 2),
        gmail_throttled_responses=run.gmail_throttled,
        cpu_seconds_per_1000_messages=round(1000 * run.cpu_seconds / messages, 1),
        elapsed_seconds=round(run.elapsed_seconds, 1),
        settled=run.settled,
        notes=tuple(run.notes),
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so each side stops its processes and drops its
    database on the way out."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_legacy_bench(
    settings: Settings,
    users: int = 2,
    messages_per_user: int = 100,
    faults: Faults | None = None,
    seed: int = 7,
    timeout: float = 600.0,
) -> LegacyBenchResult:
    """Run the old design, then inboxflow, on the same mailboxes and faults; return both.

    Arguments:
        settings: Where Kafka and Postgres are; each side creates (and drops) a database next
            to ``settings.database_url``'s and inboxflow uses a fresh topic namespace.
        users: Mailboxes, each generated with ``messages_per_user`` messages.
        faults: What both sides suffer (default: 30 % Gmail 429, 10 % 5xx, embedding API at
            half the offered rate).
        seed: Seeds the mailboxes and the Gmail fault draws.
        timeout: Seconds each side may take to settle; a side that does not says so
            (``settled`` false) and its unfinished messages count as failed.
    """
    plan = Plan(
        conninfo=settings.database_url.get_secret_value(),
        users=tuple(f"user{i + 1}@legacy-bench.inboxflow.test" for i in range(users)),
        messages_per_user=messages_per_user,
        faults=faults or Faults(),
        seed=seed,
        timeout=timeout,
        gmail_user_units_per_minute=settings.gmail_user_units_per_minute,
        retry_delays=RETRY_DELAYS,
    )
    with _sigterm_unwinds():
        legacy = side_figures(run_legacy_side(plan))
        inboxflow = side_figures(run_inboxflow_side(settings, plan))
    return LegacyBenchResult(
        users=users,
        messages_per_user=messages_per_user,
        seed=seed,
        faults=plan.faults,
        legacy=legacy,
        inboxflow=inboxflow,
    )
