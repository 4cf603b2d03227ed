"""Operator tools for dead-letter topics: list, show, redrive (merge) and purge.

One module per job: ``letters`` (the decoded record, reading a DLQ), ``summary`` (what each DLQ
holds), ``progress`` (what a redrive or purge already handled, kept in Kafka), ``redrive`` (send
dead letters back to the first retry tier) and ``purge`` (mark them handled); this package only
re-exports their public names, so ``from ops.dlq import redrive`` and ``dlq_lib.redrive(...)``
work. Like every ``ops`` module it is a library: explicit arguments, no settings, no printing
(``inboxflow.cli.ops`` prints); this file must hold no logic of its own.
"""

from __future__ import annotations

from ops.dlq.letters import DeadLetter, dead_letter_from, read_dlq
from ops.dlq.progress import PROGRESS_PREFIX, RedriveProgress, redrive_group_id
from ops.dlq.purge import PurgeReport, purge
from ops.dlq.redrive import (
    RedriveError,
    RedriveReport,
    redrive,
    redrive_headers,
    redrive_target,
)
from ops.dlq.summary import DlqSummary, list_dlqs

__all__ = [
    "PROGRESS_PREFIX",
    "DeadLetter",
    "DlqSummary",
    "PurgeReport",
    "RedriveError",
    "RedriveProgress",
    "RedriveReport",
    "dead_letter_from",
    "list_dlqs",
    "purge",
    "read_dlq",
    "redrive",
    "redrive_group_id",
    "redrive_headers",
    "redrive_target",
]
