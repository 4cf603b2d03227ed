"""What must hold after a fault campaign, checked from Postgres and the topics alone.

The checker trusts nothing the workers say about themselves (no metrics, no logs, no agent
state): it reads the ``jobs`` rows, the tables the sinks write, every record on the result,
job-state and dead-letter topics, the committed offsets, and an audit of every write to
``jobs`` recorded by a trigger it installs before the run (``install_write_audit``). What it
expects comes from the workload itself: the messages in the emulated mailboxes, parsed here
with the standard library's own email parser, and the permanent faults the campaign injected.

Invariants (each violation is one line of the report):

- **final rows**: every message the mailboxes hold has exactly one job row per stage and it is
  final: ``done``, or (only for injected poison) ``error``/``dead`` with a dead-letter record;
  nothing is left ``queued``, ``processing`` or ``retrying``; no row names a message that does
  not exist;
- **results at least once**: each done message is on the normalized and embedded topics at
  least once (extra copies are counted, not refused: at-least-once delivers some twice);
- **tables exactly once**: contact counts equal the sightings in the raw mail, each counted
  once, and agree with the ledger of counted sightings;
- **nothing moved backwards**: no write to ``jobs`` lowered a version or took a job out of
  ``done``, and each row holds the newest version its topic carries;
- **drained**: every group's and sink's lag is zero, retry tiers included;
- **dead letters explained**: the dead-letter topics hold exactly the injected poison (MIME
  bombs, undecodable records) and nothing else.
"""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from ops.lag import group_lag, total_lag
from ops.offsets import topic_partitions
from schemas.errors import UndecodableRecordError
from schemas.models import EmailEmbedded, EmailNormalized, GmailMessageFetched, JobStateChanged
from schemas.serde import Serde
from topics.catalogue import Catalogue
from topics.kafka import KafkaClients

MESSAGE_KINDS = ("normalize_google_email", "extract_contacts", "embed", "insight")
FINAL = frozenset({"done", "error", "dead"})
ROLE_HEADERS = {"from": "From", "to": "To", "cc": "Cc", "bcc": "Bcc", "reply_to": "Reply-To"}
ROLES = tuple(ROLE_HEADERS)

AUDIT_SQL = """
CREATE TABLE IF NOT EXISTS chaos_job_writes (
    seq         bigserial   PRIMARY KEY,
    op          text        NOT NULL,
    job_id      text        NOT NULL,
    old_version bigint,
    new_version bigint,
    old_status  text,
    new_status  text,
    written_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION chaos_audit_job_write() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO chaos_job_writes (op, job_id, old_version, old_status)
        VALUES (TG_OP, OLD.id, OLD.version, OLD.status);
        RETURN OLD;
    END IF;
    INSERT INTO chaos_job_writes (op, job_id, old_version, new_version, old_status, new_status)
    VALUES (TG_OP, NEW.id,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.version END, NEW.version,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS chaos_audit_job_write ON jobs;
CREATE TRIGGER chaos_audit_job_write AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION chaos_audit_job_write();
"""

BACKWARD_WRITES = """
SELECT op, job_id, old_version, new_version, old_status, new_status FROM chaos_job_writes
WHERE op = 'DELETE'
   OR (op = 'UPDATE' AND (new_version < old_version
                          OR (old_status = 'done' AND new_status <> 'done')))
ORDER BY seq LIMIT 20
"""


def install_write_audit(database_url: str) -> None:
    """Record every write to ``jobs`` from now on, by a trigger the code under test knows not."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(AUDIT_SQL)


@dataclass(frozen=True)
class Expectations:
    """What the workload put in, and so what the pipeline must have made of it.

    Attributes:
        messages: user -> ids of the messages the mailbox lists at the end.
        raw: (user, message id) -> raw RFC 822 bytes, for the contacts.
        bombs: user -> ids of messages built to be refused (normalize: permanent error).
        poison: undecodable record values produced straight onto an agent's input topic.
    """

    messages: dict[str, set[str]]
    raw: dict[tuple[str, str], bytes]
    bombs: dict[str, set[str]]
    poison: tuple[bytes, ...] = ()

    @property
    def users(self) -> list[str]:
        """The workload's users."""
        return sorted(self.messages)

    def good(self, user: str) -> set[str]:
        """Messages of ``user`` that must go all the way to done."""
        return self.messages[user] - self.bombs.get(user, set())


@dataclass
class Findings:
    """The checker's verdict: violations (must be none) and what at-least-once delivered twice."""

    violations: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)  # topic label -> extra copies
    dead_letters: dict[str, int] = field(default_factory=dict)  # DLQ -> records
    jobs_written: int = 0  # writes to jobs the audit saw

    def fail(self, invariant: str, detail: str) -> None:
        """Record one violation."""
        self.violations.append(f"{invariant}: {detail}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "violations": list(self.violations),
            "duplicates": dict(self.duplicates),
            "dead_letters": dict(self.dead_letters),
            "jobs_written": self.jobs_written,
        }


def expected_contacts(raw: bytes) -> set[tuple[str, str]]:
    """(address, role) pairs in ``raw``, as the standard library's compat32 parser reads them."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    pairs = set()
    for role, header in ROLE_HEADERS.items():
        values = [str(value) for value in message.get_all(header, [])]
        for _, address in getaddresses(values):
            address = address.strip().lower()
            if "@" in address and " " not in address:
                pairs.add((address, role))
    return pairs


class Checker:
    """Runs every invariant against one campaign's database and topics."""

    def __init__(
        self,
        database_url: str,
        kafka: KafkaClients,
        catalogue: Catalogue,
        serde: Serde,
        expected: Expectations,
    ) -> None:
        self._database_url = database_url
        self._kafka = kafka
        self._catalogue = catalogue
        self._serde = serde
        self._expected = expected

    async def check(self) -> Findings:
        """Return the findings of every invariant."""
        findings = Findings()
        rows = self._job_rows()
        self._check_final_rows(rows, findings)
        await self._check_results(findings)
        self._check_contacts(findings)
        await self._check_versions(rows, findings)
        await self._check_drained(findings)
        await self._check_dead_letters(rows, findings)
        return findings

    async def drained(self) -> bool:
        """Return True when no group, retry tier or sink has records left to read."""
        probe = Findings()
        await self._check_drained(probe)
        return not probe.violations

    def settled(self) -> bool:
        """Return True when every expected job row exists and is final (cheap; for waiting)."""
        rows = self._job_rows()
        probe = Findings()
        self._check_final_rows(rows, probe)
        return not probe.violations

    # --- jobs -----------------------------------------------------------------------------------

    def _job_rows(self) -> dict[str, tuple[str, str, str, str, int]]:
        """job id -> (user, kind, subject, status, version) of the workload's users."""
        with psycopg.connect(self._database_url) as conn:
            found = conn.execute(
                "SELECT id, user_id, kind, subject_id, status, version FROM jobs "
                "WHERE user_id = ANY(%(users)s)",
                {"users": self._expected.users},
            ).fetchall()
        return {
            job: (user, kind, subject, status, version)
            for job, user, kind, subject, status, version in found
        }

    def _check_final_rows(
        self, rows: dict[str, tuple[str, str, str, str, int]], findings: Findings
    ) -> None:
        by_key = {(user, kind, subject): status for user, kind, subject, status, _ in rows.values()}
        for user in self._expected.users:
            for message in sorted(self._expected.good(user)):
                for kind in MESSAGE_KINDS:
                    status = by_key.get((user, kind, message))
                    if status != "done":
                        findings.fail("final rows", f"{kind} of {user}/{message} is {status}")
            for message in sorted(self._expected.bombs.get(user, set())):
                status = by_key.get((user, "normalize_google_email", message))
                if status not in ("error", "dead"):
                    findings.fail("final rows", f"bomb {user}/{message} normalize is {status}")
        for user, kind, subject, status, _ in rows.values():
            if status not in FINAL:
                findings.fail("final rows", f"{kind} of {user}/{subject} left {status}")
            if kind in MESSAGE_KINDS and subject not in self._expected.messages.get(user, ()):
                findings.fail("final rows", f"{kind} row for unknown message {user}/{subject}")

    # --- topics ---------------------------------------------------------------------------------

    async def _check_results(self, findings: Findings) -> None:
        catalogue = self._catalogue
        for label, topic, model in (
            ("fetched", catalogue.message_fetched.name, GmailMessageFetched),
            ("normalized", catalogue.email_normalized.name, EmailNormalized),
            ("embedded", catalogue.email_embedded.name, EmailEmbedded),
        ):
            copies: Counter[tuple[str, str]] = Counter()
            for record in await read_topic(self._kafka, topic):
                event = self._decoded(record.value, model)
                if event is not None:
                    copies[(event.user_id, event.message_id)] += 1
            findings.duplicates[label] = sum(n - 1 for n in copies.values())
            if label == "fetched":
                continue  # bombs are fetched too; the done rows need the later results
            for user in self._expected.users:
                missing = [m for m in self._expected.good(user) if not copies[(user, m)]]
                if missing:
                    findings.fail(
                        "results", f"{len(missing)} of {user} not on {label}: {missing[:3]}"
                    )

    def _decoded(self, value: bytes | None, model: type[Any]) -> Any:
        try:
            return self._serde.decode(value or b"", model)
        except UndecodableRecordError:
            return None  # injected poison; the dead-letter check accounts for it

    async def _check_versions(
        self, rows: dict[str, tuple[str, str, str, str, int]], findings: Findings
    ) -> None:
        with psycopg.connect(self._database_url) as conn:
            for op, job, old_v, new_v, old_s, new_s in conn.execute(BACKWARD_WRITES):
                findings.fail("backwards", f"{op} {job}: {old_s}@{old_v} -> {new_s}@{new_v}")
            count = conn.execute("SELECT count(*) FROM chaos_job_writes").fetchone()
            findings.jobs_written = int(count[0]) if count else 0
        newest: dict[str, int] = {}
        seen: Counter[tuple[str, int]] = Counter()
        for record in await read_topic(self._kafka, self._catalogue.job_state_changed.name):
            event = self._decoded(record.value, JobStateChanged)
            if event is None or event.job_id not in rows:
                continue
            newest[event.job_id] = max(newest.get(event.job_id, -1), event.version)
            seen[(event.job_id, event.version)] += 1
        findings.duplicates["job-state"] = sum(n - 1 for n in seen.values())
        for job, (*_, status, version) in rows.items():
            if job in newest and version != newest[job]:
                findings.fail("backwards", f"{job} holds {status}@{version}, newest {newest[job]}")

    async def _check_drained(self, findings: Findings) -> None:
        ours = {topic.name for topic in self._catalogue.topics}
        for group in self._catalogue.groups:
            if group.agent.startswith("sink-"):
                continue  # sinks keep their offsets in Postgres: checked below
            for group_id, topics in (
                (group.group_id, group.sources),
                (group.retry_group_id, group.retry_topics),
            ):
                names = [t.name for t in topics if t.name in ours]
                lag = total_lag(await group_lag(self._kafka, group_id, names))
                if lag:
                    findings.fail("drained", f"{group_id} has {lag} records unread")
        await self._check_sinks_drained(findings)

    async def _check_sinks_drained(self, findings: Findings) -> None:
        with psycopg.connect(self._database_url) as conn:
            stored = {
                (group, TopicPartition(topic, partition)): offset
                for group, topic, partition, offset in conn.execute(
                    "SELECT group_id, topic, partition, next_offset FROM sink_offsets"
                )
            }
        sinks = [g for g in self._catalogue.groups if g.agent.startswith("sink-")]
        partitions = await end_offsets(self._kafka, [t.name for g in sinks for t in g.sources])
        for group in sinks:
            for topic in group.sources:
                for tp, end in partitions.items():
                    if tp.topic != topic.name or end == 0:
                        continue
                    at = stored.get((group.group_id, tp), -1)
                    if at != end:
                        findings.fail("drained", f"{group.group_id} at {at} of {end} on {tp}")

    async def _check_dead_letters(
        self, rows: dict[str, tuple[str, str, str, str, int]], findings: Findings
    ) -> None:
        bombs = {(u, m) for u, ids in self._expected.bombs.items() for m in ids}
        poison = set(self._expected.poison)
        lettered: set[tuple[str, str]] = set()
        poisoned: set[bytes] = set()
        for group in self._catalogue.groups:
            records = await read_topic(self._kafka, group.dlq.name)
            findings.dead_letters[group.dlq.name] = len(records)
            for record in records:
                value = record.value or b""
                if value in poison:
                    poisoned.add(value)
                    continue
                event = self._decoded(value, GmailMessageFetched)
                key = (event.user_id, event.message_id) if event is not None else None
                if group.agent == "normalize" and key in bombs:
                    lettered.add(key)
                    continue
                findings.fail(
                    "dead letters", f"unexplained record on {group.dlq.name}: {_origin(record)}"
                )
        for user, message in sorted(bombs - lettered):
            findings.fail("dead letters", f"bomb {user}/{message} has no dead-letter record")
        if poison - poisoned:
            findings.fail(
                "dead letters", f"{len(poison - poisoned)} poison records not dead-lettered"
            )
        for job, (user, _kind, subject, status, _) in rows.items():
            if status in ("error", "dead") and (user, subject) not in bombs:
                findings.fail("dead letters", f"{job} is {status} without an injected cause")

    # --- tables ---------------------------------------------------------------------------------

    def _check_contacts(self, findings: Findings) -> None:
        wanted: Counter[tuple[str, str, str]] = Counter()
        for user in self._expected.users:
            for message in self._expected.good(user):
                for address, role in expected_contacts(self._expected.raw[(user, message)]):
                    wanted[(user, address, role)] += 1
        counted: Counter[tuple[str, str, str]] = Counter()
        ledger: Counter[tuple[str, str, str]] = Counter()
        with psycopg.connect(self._database_url) as conn:
            for user, address, *counts in conn.execute(
                "SELECT user_id, address, from_count, to_count, cc_count, bcc_count, "
                "reply_to_count FROM contacts WHERE user_id = ANY(%(users)s)",
                {"users": self._expected.users},
            ):
                for role, count in zip(ROLES, counts, strict=True):
                    if count:
                        counted[(user, address, role)] = count
            for user, address, role, count in conn.execute(
                "SELECT user_id, address, role, count(*) FROM contact_messages "
                "WHERE user_id = ANY(%(users)s) GROUP BY 1, 2, 3",
                {"users": self._expected.users},
            ):
                ledger[(user, address, role)] = count
        for key in sorted(set(wanted) | set(counted)):
            if wanted[key] != counted[key]:
                findings.fail(
                    "exactly once", f"contact {key}: counted {counted[key]}, sent {wanted[key]}"
                )
        for key in sorted(set(ledger) | set(counted)):
            if ledger[key] != counted[key]:
                findings.fail(
                    "exactly once", f"contact {key}: {counted[key]} counted, ledger {ledger[key]}"
                )


def _origin(record: ConsumerRecord[bytes, bytes]) -> str:
    headers = {name: value.decode(errors="replace") for name, value in record.headers or ()}
    where = headers.get("x-original-topic", "?")
    error = headers.get("x-exception-class", "?")
    return f"offset {record.offset}, from {where}, {error}"


async def end_offsets(kafka: KafkaClients, topics: Iterable[str]) -> dict[TopicPartition, int]:
    """Return the end offset of every partition of ``topics``."""
    async with kafka.started(kafka.consumer()) as consumer:
        return await _ends(kafka, consumer, topics)


async def read_topic(kafka: KafkaClients, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Read every record of ``topic`` from its start up to its end offsets at the call."""
    records: list[ConsumerRecord[bytes, bytes]] = []
    async with kafka.started(kafka.consumer()) as consumer:
        ends = {tp: end for tp, end in (await _ends(kafka, consumer, [topic])).items() if end}
        if not ends:
            return records
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        while any([await consumer.position(tp) < end for tp, end in ends.items()]):
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, part in batch.items():
                records.extend(r for r in part if r.offset < ends[tp])
    return records


async def _ends(
    kafka: KafkaClients, consumer: AIOKafkaConsumer, topics: Iterable[str]
) -> dict[TopicPartition, int]:
    async with kafka.started(kafka.admin()) as admin:
        partitions = await topic_partitions(admin, dict.fromkeys(topics))
    return dict(await consumer.end_offsets(partitions)) if partitions else {}
