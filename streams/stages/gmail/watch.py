"""Gmail push registration: ``users.watch`` and ``users.stop`` through a ``GmailClient``.

A watch makes Gmail publish a notification to a Pub/Sub topic whenever the mailbox changes; it
lapses after seven days unless renewed (Google suggests daily). These calls go through the
client's limiter, retries and error classification like every other Gmail call, at the units
its cost table gives them (100 and 50). No settings, no environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from streams.stages.gmail.client import GmailClient

TOPIC_NAME = re.compile(r"^projects/[^/]+/topics/[^/]+$")

LabelFilter = Literal["include", "exclude"]


@dataclass(frozen=True)
class WatchResult:
    """What ``users.watch`` answered.

    Attributes:
        history_id: the mailbox's history id when the watch started; notifications announce
            changes after it.
        expiration: when Gmail stops pushing unless the watch is renewed (UTC).
    """

    history_id: str
    expiration: datetime


async def watch(
    client: GmailClient,
    user: str,
    topic: str,
    label_ids: list[str] | None = None,
    *,
    label_filter: LabelFilter = "include",
) -> WatchResult:
    """Start or renew push notifications of ``user``'s mailbox to the Pub/Sub ``topic``.

    Idempotent: calling it again renews the watch (and replaces its label filter).

    Args:
        client: the Gmail client (its limiter, retries and credentials are used).
        user: the mailbox's address.
        topic: ``projects/<project>/topics/<topic>``; Gmail must be allowed to publish to it
            (grant ``gmail-api-push@system.gserviceaccount.com`` the Pub/Sub Publisher role).
        label_ids: only changes related to these labels (``include``) or all but those
            (``exclude``); ``None`` = every change.
        label_filter: how ``label_ids`` applies.

    Raises:
        ValueError: ``topic`` is not a Pub/Sub topic name (nothing is sent).
        PermanentError: Gmail refused the watch (unknown topic, no publish permission).
        RateLimitedError, QuotaExceededError, TransientError: as for every Gmail call.
    """
    if not TOPIC_NAME.match(topic):
        raise ValueError(f"{topic!r} is not a Pub/Sub topic name (projects/<p>/topics/<t>)")
    body: dict[str, Any] = {"topicName": topic}
    if label_ids:
        body["labelIds"] = list(label_ids)
        body["labelFilterBehavior"] = label_filter
    answer = await client._call(
        user, "users.watch", lambda users: users.watch(userId=user, body=body)
    )
    return WatchResult(
        history_id=str(answer["historyId"]),
        expiration=datetime.fromtimestamp(int(answer["expiration"]) / 1000, UTC),
    )


async def stop_watch(client: GmailClient, user: str) -> None:
    """Stop push notifications of ``user``'s mailbox (a no-op when none is set up).

    Raises:
        PermanentError, RateLimitedError, QuotaExceededError, TransientError: as for every
            Gmail call.
    """
    await client._call(user, "users.stop", lambda users: users.stop(userId=user))
