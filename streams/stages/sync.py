"""The sync stage: one SyncRequested in; what changed in the mailbox out.

Full sync lists every id (``messages.list``); incremental reads ``history.list`` from the stored
historyId and falls back to a full sync when Gmail says that id is too old. Out go one
MessageDiscovered per new message, one MessageLabelsChanged per relabelled message and one
MessageDeleted per message gone. Ids a sync already emitted are skipped, so a resync fetches
nothing twice. The historyId checkpoint is written only after Kafka acknowledged the events it
covers (``Outcome.after_publish``).

The account's label filter (``accounts.label_filter``, default SPAM and TRASH) keeps messages
with those labels from being discovered; one relabelled out of the filter later (a message
moved out of Spam) is discovered then. A message relabelled into the filter keeps its rows,
with its labels updated: only a deletion in Gmail removes what inboxflow derived from a message.

After a stale historyId (404) the full resync also reconciles: ids emitted before that Gmail no
longer has (spam and trash included) are reported deleted (``reason=reconciled``) and
forgotten, so a later reconciliation does not report them again. A full listing reads no
history, so a second 404 cannot restart it.

The backfill lane runs a second instance on its own topics (``backfill-requested`` in,
``backfill-discovered`` out, continuations to itself): a backfill is a full listing like any
other, sharing ``sync_listings`` with live listings (one listing per user at a time), whose
messages are fetched at the backfill's share of the quota. A backfill of a mailbox that has no
checkpoint yet stores the listing's historyId once its first page is in Kafka, so incremental
syncs (push, the scheduler) bring new mail on the live lane while the backfill lists older mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from db.accounts import Account, AccountState, SyncOutcome
from db.agent_state import AgentState
from schemas.errors import (
    AccountRevokedError,
    StageTimeoutError,
    StaleHistoryError,
    safe_error_text,
)
from schemas.models import (
    DeletionReason,
    JobKind,
    MessageDeleted,
    MessageDiscovered,
    MessageLabelsChanged,
    SyncRequested,
)
from schemas.serde import Serde
from streams.runtime.stage import JobRef, Outcome, Outgoing, Record
from streams.stages.base import Decoder, event_record, gmail_breakers, utc_now
from streams.stages.gmail.client import GmailClient, LabelChange, MessageRef

log = logging.getLogger(__name__)

PAGE_SIZE = 500  # messages.list's maximum
RECONCILE = "reconcile"
# A listing whose last page moved longer ago than this no longer holds off a new one.
LISTING_IDLE_SECONDS = 600.0


@dataclass(frozen=True)
class Listing:
    """What a sync found, and the historyId to resume from next time."""

    refs: list[MessageRef]  # listed or added, before the label filter
    history_id: str
    deleted: list[str] = field(default_factory=list)
    labels: dict[str, LabelChange] = field(default_factory=dict)
    reconciled: bool = False  # deleted holds ids a full resync no longer found


def passes(label_ids: Sequence[str], label_filter: Sequence[str]) -> bool:
    """Return True unless the message carries a label the account skips."""
    return not set(label_ids) & set(label_filter)


def exclusion_query(label_filter: Sequence[str]) -> str | None:
    """Return the ``messages.list`` query that leaves out the skipped labels.

    Spam and trash are left out by ``includeSpamTrash=false`` already; categories have their
    own operator (``-category:promotions``); other labels are named (``-label:Receipts``).
    """
    terms = []
    for label in label_filter:
        if label in ("SPAM", "TRASH"):
            continue
        if label.startswith("CATEGORY_"):
            terms.append(f"-category:{label.removeprefix('CATEGORY_').lower()}")
        else:
            terms.append(f"-label:{label}")
    return " ".join(terms) or None


class SyncStage:
    """Lists a user's mailbox for each SyncRequested."""

    kind = JobKind.GOOGLE_GMAIL_SYNC
    phase = 0

    def __init__(
        self,
        *,
        serde: Serde,
        gmail: GmailClient,
        state: AgentState,
        requests_topic: str,
        discovered_topic: str,
        deleted_topic: str,
        labels_topic: str,
        deadline_for: Callable[[int], float],
        clock: Callable[[], float] = time.time,
        name: str = "sync",
        backfill: bool = False,
    ) -> None:
        """
        Args:
            name: agent name within the group (``sync``; the backfill lane's ``backfill``).
            backfill: this instance is the backfill lane: a first listing of a mailbox without
                a checkpoint stores one after its first page (see the module docstring).
        """
        self.name = name
        self.backfill = backfill
        self.requests = Decoder(serde, SyncRequested)
        self.serde = serde
        self.gmail = gmail
        self.state = state
        self.requests_topic = requests_topic  # where a listing's continuations go
        self.discovered_topic = discovered_topic
        self.deleted_topic = deleted_topic
        self.labels_topic = labels_topic
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
        # Keyed by user, except continuations of a listing: each is its own page, in order.
        leads: dict[str | int, tuple[int, SyncRequested]] = {}
        for index, request in enumerate(decoded):
            if isinstance(request, Exception):
                outcomes[index] = Outcome(error=request)
            elif request.continues_listing:
                leads[index] = (index, request)
            elif request.user_id in leads:
                at, lead = leads[request.user_id]
                outcomes[index] = Outcome(note=f"coalesced into sync {lead.sync_id}")
                full = lead.full or request.full
                leads[request.user_id] = (at, lead.model_copy(update={"full": full}))
            else:
                leads[request.user_id] = (index, request)
        for index, lead in sorted(leads.values(), key=lambda item: item[0]):
            try:
                outcomes[index] = await self._sync_account(lead)
            except Exception as exc:  # noqa: BLE001 - routed by the runner
                outcomes[index] = Outcome(error=exc)
                await self._note_failure(lead.user_id, exc)
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
        return await self._sync(request, account)

    async def _note_failure(self, user: str, exc: Exception) -> None:
        # Best effort: the failure itself is routed by the runner whatever happens here.
        try:
            if isinstance(exc, AccountRevokedError):
                # Google refused the grant: stop every sync of the account (the scheduler, push
                # and queued requests all skip it) until the operator grants access again.
                log.warning("gmail grant refused, account marked revoked user=%s", user)
                await self.state.revoke_account(user)
            now = utc_now(self.clock)
            await self.state.record_sync_outcome(
                user, SyncOutcome.FAILED, now, safe_error_text(exc)[:500]
            )
        except Exception:
            log.warning("could not record the failed sync of %s", user, exc_info=True)

    async def _sync(self, request: SyncRequested, account: Account) -> Outcome:
        if request.continues_listing:
            return await self._listing_step(request, account)
        user = request.user_id
        checkpoint = await self.state.sync_checkpoint(user)
        stale = False
        if not request.full and not request.label_ids and checkpoint is not None:
            try:
                async with self._deadline(user):
                    changes = await self.gmail.list_changes(user, checkpoint.history_id)
            except StaleHistoryError:
                log.warning(
                    "stale historyId, full resync user=%s from=%s", user, checkpoint.history_id
                )
                stale = True
            else:
                listing = Listing(
                    changes.added,
                    changes.history_id,
                    deleted=changes.deleted,
                    labels=changes.labels,
                )
                return await self._incremental(request, account, listing)
        running = await self.state.listing_in_progress(user, LISTING_IDLE_SECONDS)
        if running is not None and running != request.sync_id:
            return Outcome(note=f"joined the listing of sync {running}")
        # The historyId is read before listing: mail that lands during the listing is picked
        # up by the next incremental sync (and skipped there if the listing already had it).
        profile = await self.gmail.get_profile(user)
        first = request.model_copy(
            update={
                "full": True,
                "listing_history_id": int(profile.history_id),
                "reconcile_after": stale,
            }
        )
        outcome = await self._listing_step(first, account)
        if self.backfill and checkpoint is None and not request.label_ids:
            outcome.after_publish = self._checkpoint_early(first, outcome.after_publish)
        return outcome

    def _checkpoint_early(
        self, request: SyncRequested, then: Callable[[], Awaitable[None]] | None
    ) -> Callable[[], Awaitable[None]]:
        """Store the listing's historyId as the first checkpoint once its first page is safe.

        Only for a mailbox that had none: the listing emits everything up to that id, and
        incremental syncs from it emit what came after, on the live lane, while the backfill
        runs. A mailbox with a checkpoint keeps it (its deletions and label changes since then
        come from history, which a listing does not read).
        """
        user, history = request.user_id, str(request.listing_history_id)

        async def checkpoint() -> None:
            if then is not None:
                await then()
            await self.state.save_sync_checkpoint(user, history, request.sync_id, full=False)

        return checkpoint

    async def _incremental(
        self, request: SyncRequested, account: Account, listing: Listing
    ) -> Outcome:
        user = request.user_id
        skip = account.label_filter
        candidates = [ref for ref in listing.refs if passes(ref.label_ids, skip)]
        # A known message relabelled out of the filter needs no discovery; an unknown one does.
        candidates += [
            MessageRef(mid, change.thread_id, change.label_ids)
            for mid, change in listing.labels.items()
            if passes(change.label_ids, skip)
        ]
        known = await self.state.known_message_ids(user, [ref.id for ref in candidates])
        fresh = list({ref.id: ref for ref in candidates if ref.id not in known}.values())
        now = utc_now(self.clock)
        outputs = self._discovered(request, fresh, int(listing.history_id), now)
        outputs += self._changes(request, listing, now)
        log.info(
            "sync listed user=%s sync=%s listed=%s new=%s relabelled=%s deleted=%s history=%s",
            user, request.sync_id, len(listing.refs), len(fresh), len(listing.labels),
            len(listing.deleted), listing.history_id,
        )  # fmt: skip

        async def checkpoint() -> None:
            await self.state.remember_message_ids(user, request.sync_id, [r.id for r in fresh])
            if listing.deleted:
                await self.state.forget_message_ids(user, listing.deleted)
            await self.state.save_sync_checkpoint(
                user, listing.history_id, request.sync_id, full=False
            )
            await self.state.record_sync_outcome(user, SyncOutcome.OK, utc_now(self.clock))

        return Outcome(
            outputs=outputs, queued=self._queued(request, fresh), after_publish=checkpoint
        )

    async def _listing_step(self, request: SyncRequested, account: Account) -> Outcome:
        """One page of a full listing; the next page is a continuation record to ourselves.

        Memory holds one page. A crash redelivers the page's record (or its continuation, once
        Kafka acknowledged the page): the listing resumes there, and known ids are not emitted
        again.
        """
        user = request.user_id
        await self.state.note_listing(user, request.sync_id, request.listing_phase)
        if request.listing_phase == RECONCILE:
            return await self._reconcile_step(request)
        query = None if request.label_ids else exclusion_query(account.label_filter)
        async with self._deadline(user):
            refs, token = await self.gmail.list_page(
                user, page_token=request.page_token, label_ids=request.label_ids, query=query
            )
        known = (
            set()
            if request.reemit
            else await self.state.known_message_ids(user, [ref.id for ref in refs])
        )
        fresh = [ref for ref in refs if ref.id not in known]
        now = utc_now(self.clock)
        history = request.listing_history_id
        outputs = self._discovered(request, fresh, history, now)
        follow: SyncRequested | None = None
        if token is not None:
            follow = request.model_copy(update={"page_token": token, "reason": "continuation"})
        elif request.reconcile_after:
            update = {"page_token": None, "listing_phase": RECONCILE, "reason": "continuation"}
            follow = request.model_copy(update=update)
        if follow is not None:
            outputs.append(event_record(self.serde, self.requests_topic, follow))
        log.info(
            "sync page user=%s sync=%s listed=%s new=%s more=%s",
            user, request.sync_id, len(refs), len(fresh), token is not None,
        )  # fmt: skip

        async def checkpoint() -> None:
            await self.state.remember_message_ids(user, request.sync_id, [r.id for r in fresh])
            if token is not None:
                return
            # The discover pass is over: a label backfill leaves the cursor where it was.
            if history is not None and not request.label_ids:
                await self.state.save_sync_checkpoint(
                    user, str(history), request.sync_id, full=True
                )
            if follow is None:
                await self.state.end_listing(user, request.sync_id)
                await self.state.record_sync_outcome(user, SyncOutcome.OK, utc_now(self.clock))

        return Outcome(
            outputs=outputs,
            queued=self._queued(request, fresh),
            after_publish=checkpoint,
            finishes_job=follow is None,
        )

    async def _reconcile_step(self, request: SyncRequested) -> Outcome:
        """One page of the reconcile pass: ids Gmail has; at the end, those it no longer has."""
        user = request.user_id
        async with self._deadline(user):
            refs, token = await self.gmail.list_page(
                user, page_token=request.page_token, include_spam_trash=True
            )
        await self.state.note_listed_ids(user, request.sync_id, [ref.id for ref in refs])
        if token is not None:
            follow = request.model_copy(update={"page_token": token})
            return Outcome(
                outputs=[event_record(self.serde, self.requests_topic, follow)],
                finishes_job=False,
            )
        gone = await self.state.unlisted_known_ids(user, request.sync_id)
        listing = Listing([], "", deleted=gone, reconciled=True)
        outputs = self._changes(request, listing, utc_now(self.clock))
        log.info("sync reconciled user=%s sync=%s gone=%s", user, request.sync_id, len(gone))

        async def finish() -> None:
            await self.state.forget_message_ids(user, gone)
            await self.state.end_listing(user, request.sync_id)
            await self.state.record_sync_outcome(user, SyncOutcome.OK, utc_now(self.clock))

        return Outcome(outputs=outputs, after_publish=finish)

    def _discovered(
        self, request: SyncRequested, fresh: list[MessageRef], history: int | None, now: datetime
    ) -> list[Outgoing]:
        return [
            event_record(
                self.serde,
                self.discovered_topic,
                MessageDiscovered(
                    user_id=request.user_id,
                    message_id=ref.id,
                    thread_id=ref.thread_id or "",
                    sync_id=request.sync_id,
                    history_id=history,
                    discovered_at=now,
                ),
            )
            for ref in fresh
        ]

    def _queued(
        self, request: SyncRequested, fresh: list[MessageRef]
    ) -> list[tuple[JobKind, JobRef]]:
        return [
            (JobKind.NORMALIZE_GOOGLE_EMAIL, JobRef(request.user_id, ref.id, request.sync_id))
            for ref in fresh
        ]

    @contextlib.asynccontextmanager
    async def _deadline(self, user: str) -> AsyncIterator[None]:
        # One page or one history read: a bounded call, whatever the mailbox's size.
        seconds = self.deadline_for(PAGE_SIZE)
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError as exc:
            raise StageTimeoutError(f"listing {user} ran past {seconds:.0f}s") from exc

    def _changes(self, request: SyncRequested, listing: Listing, now: datetime) -> list[Outgoing]:
        """The label changes and deletions a listing found, as events."""
        user, sync_id = request.user_id, request.sync_id
        outputs = [
            event_record(
                self.serde,
                self.labels_topic,
                MessageLabelsChanged(
                    user_id=user,
                    message_id=mid,
                    thread_id=change.thread_id or "",
                    sync_id=sync_id,
                    history_id=int(change.history_id or listing.history_id),
                    label_ids=list(change.label_ids),
                    changed_at=now,
                ),
            )
            for mid, change in listing.labels.items()
        ]
        reason = DeletionReason.RECONCILED if listing.reconciled else DeletionReason.DELETED
        outputs += [
            event_record(
                self.serde,
                self.deleted_topic,
                MessageDeleted(
                    user_id=user,
                    message_id=mid,
                    sync_id=sync_id,
                    history_id=None if listing.reconciled else int(listing.history_id),
                    reason=reason,
                    deleted_at=now,
                ),
            )
            for mid in listing.deleted
        ]
        return outputs
