"""The sync stage: one SyncRequested in, one MessageDiscovered per new message out.

Full sync lists every id (``messages.list``); incremental reads ``history.list`` from the stored
historyId and falls back to a full sync when Gmail says that id is too old. Ids a sync already
emitted are skipped, so a resync fetches nothing twice. The historyId checkpoint is written only
after Kafka acknowledged the events it covers (``Outcome.after_publish``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from db.accounts import AccountState, SyncOutcome
from db.agent_state import AgentState
from schemas.errors import StageTimeoutError, StaleHistoryError
from schemas.models import JobKind, MessageDiscovered, SyncRequested
from schemas.serde import Serde
from streams.runtime.stage import JobRef, Outcome, Record
from streams.stages.base import Decoder, event_record, gmail_breakers, utc_now
from streams.stages.gmail.client import GmailClient, MessageRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listing:
    """What a sync found: ids to emit and the historyId to resume from next time."""

    refs: list[MessageRef]
    history_id: str
    full: bool


class SyncStage:
    """Lists a user's mailbox for each SyncRequested."""

    name = "sync"
    kind = JobKind.GOOGLE_GMAIL_SYNC
    phase = 0

    def __init__(
        self,
        *,
        serde: Serde,
        gmail: GmailClient,
        state: AgentState,
        discovered_topic: str,
        deadline_for: Callable[[int], float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.requests = Decoder(serde, SyncRequested)
        self.serde = serde
        self.gmail = gmail
        self.state = state
        self.discovered_topic = discovered_topic
        self.deadline_for = deadline_for  # seconds a sync of a mailbox this size may take
        self.clock = clock

    @property
    def timeout(self) -> float:
        """Outer bound; each sync gets a deadline scaled by its mailbox (see ``_list``)."""
        return self.deadline_for(2_000_000)

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """Gmail overall and each user in the batch (records are keyed by user id)."""
        return gmail_breakers(records)

    def job_of(self, record: Record) -> JobRef:
        """A sync job per request."""
        request = self.requests.decode(record)
        return JobRef(request.user_id, request.sync_id, batch_id=request.sync_id)

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Sync each user once per batch; one user's failure fails only its own requests.

        Requests of one user in a batch are coalesced into the first (full if any was full):
        the checkpoint of one is only written after the batch is published, so a second listing
        would start from stale state and emit the same messages again.
        """
        decoded = self.requests.decode_each(records)
        outcomes: list[Outcome] = [Outcome() for _ in records]
        leads: dict[str, tuple[int, SyncRequested]] = {}
        for index, request in enumerate(decoded):
            if isinstance(request, Exception):
                outcomes[index] = Outcome(error=request)
            elif request.user_id in leads:
                at, lead = leads[request.user_id]
                outcomes[index] = Outcome(note=f"coalesced into sync {lead.sync_id}")
                full = lead.full or request.full
                leads[request.user_id] = (at, lead.model_copy(update={"full": full}))
            else:
                leads[request.user_id] = (index, request)
        for user, (index, lead) in leads.items():
            try:
                outcomes[index] = await self._sync_account(lead)
            except Exception as exc:  # noqa: BLE001 - routed by the runner
                outcomes[index] = Outcome(error=exc)
                await self._note_failure(user, exc)
        return outcomes

    async def _sync_account(self, request: SyncRequested) -> Outcome:
        # The accounts table decides what is synced: a request that was queued before its
        # account was paused or removed is skipped, not run.
        account = await self.state.account(request.user_id)
        if account is None or account.state is not AccountState.ACTIVE:
            why = "not a registered account" if account is None else f"{account.state.value}"
            log.info("sync skipped user=%s sync=%s: %s", request.user_id, request.sync_id, why)
            if account is not None:
                now = utc_now(self.clock)
                await self.state.record_sync_outcome(request.user_id, SyncOutcome.SKIPPED, now)
            return Outcome(note=f"sync skipped: account {why}")
        return await self._sync(request)

    async def _note_failure(self, user: str, exc: Exception) -> None:
        # Best effort: the failure itself is routed by the runner whatever happens here.
        try:
            now = utc_now(self.clock)
            await self.state.record_sync_outcome(user, SyncOutcome.FAILED, now, str(exc)[:500])
        except Exception:
            log.warning("could not record the failed sync of %s", user, exc_info=True)

    async def _sync(self, request: SyncRequested) -> Outcome:
        user = request.user_id
        listing = await self._list(request)
        ids = [ref.id for ref in listing.refs]
        known = await self.state.known_message_ids(user, ids)
        fresh = [ref for ref in listing.refs if ref.id not in known]
        now = utc_now(self.clock)
        outputs = [
            event_record(
                self.serde,
                self.discovered_topic,
                MessageDiscovered(
                    user_id=user,
                    message_id=ref.id,
                    thread_id=ref.thread_id or "",
                    sync_id=request.sync_id,
                    history_id=int(listing.history_id) if listing.history_id else None,
                    discovered_at=now,
                ),
            )
            for ref in fresh
        ]
        queued = [
            (JobKind.NORMALIZE_GOOGLE_EMAIL, JobRef(user, ref.id, batch_id=request.sync_id))
            for ref in fresh
        ]
        log.info(
            "sync listed user=%s sync=%s full=%s listed=%s new=%s history=%s",
            user, request.sync_id, listing.full, len(ids), len(fresh), listing.history_id,
        )  # fmt: skip

        async def checkpoint() -> None:
            await self.state.remember_message_ids(user, request.sync_id, [r.id for r in fresh])
            await self.state.save_sync_checkpoint(
                user, listing.history_id, request.sync_id, full=listing.full
            )
            await self.state.record_sync_outcome(user, SyncOutcome.OK, utc_now(self.clock))

        return Outcome(outputs=outputs, queued=queued, after_publish=checkpoint)

    async def _list(self, request: SyncRequested) -> Listing:
        user = request.user_id
        profile = await self.gmail.get_profile(user)
        deadline = self.deadline_for(profile.messages_total)
        try:
            async with asyncio.timeout(deadline):
                return await self._list_within(request, profile.history_id)
        except TimeoutError as exc:
            raise StageTimeoutError(
                f"sync of {user} ({profile.messages_total} messages) ran past {deadline:.0f}s"
            ) from exc

    async def _list_within(self, request: SyncRequested, current_history: str) -> Listing:
        user = request.user_id
        checkpoint = await self.state.sync_checkpoint(user)
        if not request.full and checkpoint is not None:
            try:
                changes = await self.gmail.list_changes(user, checkpoint.history_id)
                return Listing(changes.added, changes.history_id, full=False)
            except StaleHistoryError:
                log.warning(
                    "stale historyId, full resync user=%s from=%s", user, checkpoint.history_id
                )
        # The historyId is read before listing: mail that lands during the listing is picked up
        # by the next incremental sync (and skipped there if the listing already had it).
        refs = await self.gmail.list_all_message_ids(user)
        return Listing(refs, current_history, full=True)
