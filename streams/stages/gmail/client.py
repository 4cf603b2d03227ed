"""Quota-aware asynchronous Gmail client: the only code that talks to the Gmail API.

Built from the shipped discovery document with ``rootUrl`` set to the configured endpoint, so single
calls and the batch endpoint both reach the emulator or Google (google-api-python-client ignores
``api_endpoint`` for batches: googleapis/google-api-python-client#1107). Blocking calls run in a
bounded thread pool with one ``httplib2.Http`` per thread and user (httplib2 is not thread-safe).
Every call goes through the user's ``QuotaLimiter``; failures go through ``errors.classify``.

Public API for the pipeline: ``get_profile``, ``get_history_id``, ``list_message_ids`` (full sync),
``list_changes`` (incremental; ``StaleHistoryError`` on 404), ``fetch_messages`` (planner).

Credentials come from ``credentials_for(user)`` (``inboxflow/wiring.py`` passes the encrypted
store); google-auth refreshes access tokens inside each call. A grant Google refuses
(``invalid_grant``) raises ``AccountRevokedError`` at once, and the user's credentials are asked
for again on the next call (``forget_credentials``), so a new grant is picked up without a restart.
A grant of ``gmail.metadata`` alone is fetched with ``format=metadata`` (Gmail refuses ``raw`` and
``full`` for it): the fetched message is its headers with an empty body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib.resources import files
from typing import Any

import google_auth_httplib2
import httplib2
from google.auth.credentials import AnonymousCredentials, Credentials
from googleapiclient.discovery import build_from_document

from db.credentials import METADATA_SCOPE, READONLY_SCOPE
from schemas.errors import InboxflowError, RetryClass, StageTimeoutError, StaleHistoryError
from streams.runtime.metrics import gmail_user_units
from streams.stages.gmail.costs import CostTable, CostTableName
from streams.stages.gmail.credentials import token_file_credentials
from streams.stages.gmail.errors import GmailFailure, classify, refresh_failure, to_error
from streams.stages.gmail.limiter import QuotaLimiter
from streams.stages.gmail.payload import has_attachment_refs, rebuild_headers, rebuild_mime
from streams.stages.gmail.planner import (
    MAX_BATCH_PARTS,
    FetchNeed,
    MessageRef,
    PlannedCall,
    chunk_calls,
    message_call,
    plan_fetch,
)

log = logging.getLogger(__name__)
Json = dict[str, Any]
# Scopes that read message bodies; a grant with none of them but gmail.metadata reads headers only.
CONTENT_SCOPES = frozenset(
    {
        READONLY_SCOPE,
        "https://www.googleapis.com/auth/gmail.modify",
        "https://mail.google.com/",
    }
)
CONTACT_HEADERS = ("From", "To", "Cc", "Bcc", "Reply-To", "Date", "Subject", "Message-ID")
HISTORY_TYPES = ("messageAdded", "messageDeleted", "labelAdded", "labelRemoved")

__all__ = [
    "FetchNeed", "FetchOutcome", "FetchedMessage", "GmailClient", "GmailClientConfig",
    "HistoryChanges", "MessageGone", "MessageRef", "Profile",
]  # fmt: skip


@dataclass(frozen=True)
class GmailClientConfig:
    """Client knobs; ``inboxflow/wiring.py`` fills them from ``Settings``.

    Attributes:
        api_root: discovery ``rootUrl``: Google or the emulator's ``.url``.
        cost_table: ``"2026"`` or ``"legacy"`` units per method.
        user_units_per_window: per-user ceiling; ``None`` = the table's per-minute value.
        window_seconds: quota window (60 s; scale down with the units in tests).
        max_concurrency: per-user sub-requests in flight (the adaptive limit's ceiling).
        pool_size: threads running blocking calls (shared by all users).
        batch_size: calls per batch request (at most 25).
        request_timeout: socket timeout per HTTP request, seconds.
        target_utilization: fraction of the ceiling the limiter aims at.
        max_attempts: tries per call before the classified error is raised.
        credentials_dir: folder of ``<user>.json`` authorized-user files; ``None`` = anonymous.
        lane_shares: the most of each user's ceiling a lane of fetches may spend
            (``{"backfill": 0.5}``); its calls still go through the user's own limiter too, so
            all lanes together never exceed the ceiling, and the other lanes keep the rest.
    """

    api_root: str = "https://gmail.googleapis.com/"
    cost_table: CostTableName = "2026"
    user_units_per_window: int | None = None
    window_seconds: float = 60.0
    max_concurrency: int = 40
    pool_size: int = 8
    batch_size: int = MAX_BATCH_PARTS
    request_timeout: float = 60.0
    target_utilization: float = 0.98
    max_attempts: int = 8
    credentials_dir: str | None = None
    lane_shares: Mapping[str, float] = field(default_factory=dict)


# A lane's bucket holds a tenth of its window's share: a lane that was idle bursts little, so its
# units in any window stay within its share plus one batch.
LANE_BURST_FRACTION = 0.1


@dataclass(frozen=True)
class Profile:
    """``users.getProfile``."""

    email_address: str
    messages_total: int
    threads_total: int
    history_id: str


@dataclass(frozen=True)
class LabelChange:
    """A message's whole label set after a change, as ``history.list`` reported it."""

    label_ids: tuple[str, ...]
    history_id: str  # of the history record that reported the change
    thread_id: str | None = None


@dataclass(frozen=True)
class HistoryChanges:
    """What changed since a history id, with the id to store for next time."""

    added: list[MessageRef]  # with the labels each had when added
    deleted: list[str]
    labels_changed: list[str]
    history_id: str
    # The last label change of each message in ``labels_changed``.
    labels: dict[str, LabelChange] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedMessage:
    """One fetched message.

    ``raw`` is the RFC 822 message: the exact bytes Gmail stores when ``raw_exact``, an equivalent
    rebuilt from ``threads.get?format=full`` otherwise, ``None`` for ``FetchNeed.HEADERS`` (then
    ``headers`` holds the requested headers).
    """

    id: str
    thread_id: str
    label_ids: tuple[str, ...]
    history_id: str
    internal_date: int
    size_estimate: int
    snippet: str
    raw: bytes | None
    raw_exact: bool
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MessageGone:
    """The message no longer exists (404): deleted since it was listed. Not an error."""

    id: str


@dataclass(frozen=True)
class MessageFailed:
    """This message could not be fetched (its retries ran out); the others were."""

    id: str
    error: Exception


FetchOutcome = FetchedMessage | MessageGone | MessageFailed


@dataclass
class ClientStats:
    """What this client sent and saw (for benchmarks and logs)."""

    units: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    retried: int = 0
    batches: int = 0


def _b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _headers_as_message(outcome: FetchOutcome) -> FetchOutcome:
    """A headers-only fetch as a message: its headers over an empty body (``raw_exact`` false)."""
    if isinstance(outcome, FetchedMessage) and outcome.raw is None:
        return replace(outcome, raw=rebuild_headers(outcome.headers), raw_exact=False)
    return outcome


def _to_fetched(resource: Json, raw: bytes | None, exact: bool) -> FetchedMessage:
    headers = resource.get("payload", {}).get("headers", []) if raw is None else []
    return FetchedMessage(
        id=resource["id"],
        thread_id=resource.get("threadId", ""),
        label_ids=tuple(resource.get("labelIds", [])),
        history_id=str(resource.get("historyId", "")),
        internal_date=int(resource.get("internalDate", 0)),
        size_estimate=int(resource.get("sizeEstimate", 0)),
        snippet=resource.get("snippet", ""),
        raw=raw,
        raw_exact=exact,
        headers=tuple((h["name"], h["value"]) for h in headers),
    )


@dataclass
class _Round:
    """Outcome of one batch: new calls it made necessary, calls that failed retryably, and
    calls refused only because an earlier part of the batch was throttled."""

    follow_ups: list[PlannedCall] = field(default_factory=list)
    failed: list[tuple[PlannedCall, GmailFailure]] = field(default_factory=list)
    blocked: list[PlannedCall] = field(default_factory=list)


_RETRYABLE = (RetryClass.RATE_LIMIT, RetryClass.TRANSIENT, RetryClass.TIMEOUT)
_MISSING_PART = GmailFailure(RetryClass.TRANSIENT, None, 0, "missingPart", "no response part")
# The longest wait the client sits out in-process, as a limiter block or a sleep. A longer stated
# wait is raised at once as the classified error with its ``retry_after``, and
# ``schemas.errors.decide`` puts the record on a retry tier at least that long: sleeping it here
# would hold a worker, its batch and every other call for the user (and outlast the stage's
# deadline, which would turn it into a TIMEOUT and lose the time Gmail gave). One quota window,
# the limiter's backoff ceiling.
MAX_IN_PROCESS_WAIT_SECONDS = 60.0


def _loop_time(deadline: float | None) -> float | None:
    """A ``time.monotonic()`` deadline on the running loop's clock (None: no deadline)."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def _message_ids(calls: Iterable[PlannedCall]) -> list[str]:
    """The message ids ``calls`` were to fetch."""
    ids: list[str] = []
    for call in calls:
        ids.extend([call.id] if call.kind == "message" else call.message_ids)
    return ids


def _waits_too_long(failure: GmailFailure) -> bool:
    return failure.wait is not None and failure.wait > MAX_IN_PROCESS_WAIT_SECONDS


def _in_process_wait(wait: float | None) -> float | None:
    return None if wait is None else min(wait, MAX_IN_PROCESS_WAIT_SECONDS)


class GmailClient:
    """Asynchronous, quota-aware Gmail client for many users (one limiter each)."""

    def __init__(
        self,
        config: GmailClientConfig | None = None,
        *,
        credentials_for: Callable[[str], Credentials] | None = None,
        forget_credentials: Callable[[str], None] | None = None,
    ) -> None:
        """
        Args:
            config: knobs; defaults talk to Google.
            credentials_for: the user's google-auth credentials; called from worker threads
                (blocking is fine), once per thread and user until they are forgotten.
                Default: ``config.credentials_dir``'s token files, else anonymous.
            forget_credentials: called when Google refused the user's credentials (a refused
                refresh, a 401), before they are asked for again.
        """
        self.config = config or GmailClientConfig()
        self.costs = CostTable(self.config.cost_table)
        self.stats = ClientStats()
        self._credentials_for = credentials_for or self._default_credentials
        self._forget_credentials = forget_credentials
        # Bumped when a user's credentials are refused: every thread rebuilds its AuthorizedHttp.
        self._credential_generation: Counter[str] = Counter()
        self._headers_only: dict[str, tuple[int, bool]] = {}  # user -> (generation, metadata only)
        self._pool = ThreadPoolExecutor(self.config.pool_size, thread_name_prefix="gmail")
        self._local = threading.local()
        self._opened: list[httplib2.Http] = []  # closed by close(): keep-alive sockets
        self._opened_lock = threading.Lock()
        self._limiters: dict[str, QuotaLimiter] = {}
        self._lane_limiters: dict[tuple[str, str], QuotaLimiter] = {}
        doc = json.loads(files("streams.stages.gmail").joinpath("gmail.v1.json").read_text("utf-8"))
        doc["rootUrl"] = self.config.api_root
        doc.pop("mtlsRootUrl", None)
        self._discovery = json.dumps(doc)

    # -- plumbing ------------------------------------------------------------------------------

    def _default_credentials(self, user: str) -> Credentials:
        if self.config.credentials_dir is None:
            return AnonymousCredentials()  # type: ignore[no-untyped-call]
        return token_file_credentials(self.config.credentials_dir, user)

    def limiter(self, user: str) -> QuotaLimiter:
        """The user's limiter (created on first use)."""
        limiter = self._limiters.get(user)
        if limiter is None:
            c = self.config
            limiter = QuotaLimiter(
                units_per_window=c.user_units_per_window or self.costs.user_units_per_minute,
                window_seconds=c.window_seconds,
                max_concurrency=c.max_concurrency,
                target_utilization=c.target_utilization,
            )
            self._limiters[user] = limiter
            gmail_user_units().labels(user).set_function(limiter.units_in_window)
        return limiter

    def lane_limiter(self, lane: str, user: str) -> QuotaLimiter:
        """The limiter of ``user``'s share for ``lane`` (created on first use).

        Raises:
            KeyError: ``config.lane_shares`` gives the lane no share.
        """
        key = (lane, user)
        limiter = self._lane_limiters.get(key)
        if limiter is None:
            c = self.config
            share = c.lane_shares.get(lane)
            if share is None:
                raise KeyError(f"no quota share configured for lane {lane!r}")
            ceiling = c.user_units_per_window or self.costs.user_units_per_minute
            limiter = QuotaLimiter(
                units_per_window=max(1, int(ceiling * share)),
                window_seconds=c.window_seconds,
                max_concurrency=c.max_concurrency,
                target_utilization=c.target_utilization,
                burst_fraction=LANE_BURST_FRACTION,
            )
            self._lane_limiters[key] = limiter
        return limiter

    def _thread_service(self, user: str) -> tuple[Any, Any]:
        local = self._local
        if not hasattr(local, "service"):
            local.service = build_from_document(self._discovery, http=self._new_http())
            local.https = {}
        generation = self._credential_generation[user]
        cached = local.https.get(user)
        if cached is None or cached[0] != generation:
            base = self._new_http() if cached is None else cached[1].http
            authorized = google_auth_httplib2.AuthorizedHttp(self._credentials_for(user), http=base)
            cached = local.https[user] = (generation, authorized)
        return local.service, cached[1]

    def _refused(self, user: str, exc: BaseException) -> InboxflowError | None:
        """The error to raise when ``exc`` means the user's credentials are unusable, else None.

        The credentials are forgotten first, so the next call asks for them again (a new grant, or
        the account's revoked state, is seen without a restart). An ``InboxflowError`` here came
        from ``credentials_for`` (a missing key, a revoked account) and is raised as it is.
        """
        if isinstance(exc, InboxflowError):
            return exc
        error = refresh_failure(exc, user)
        if error is not None and error.retry_class is RetryClass.PERMANENT:
            self.forget_credentials(user)
        return error

    def _failure(self, user: str, exc: Exception) -> GmailFailure:
        """Classify a failed call; raise at once when the user's credentials are unusable.

        A 401 drops the cached credentials, so the retry asks for them (and a refresh) again.
        """
        refused = self._refused(user, exc)
        if refused is exc:
            raise exc
        if refused is not None:
            raise refused from exc
        failure = classify(exc)
        if failure.status == 401:
            self.forget_credentials(user)
        return failure

    def forget_credentials(self, user: str) -> None:
        """Drop the user's credentials in every thread; the next call asks for them again."""
        self._credential_generation[user] += 1
        if self._forget_credentials is not None:
            self._forget_credentials(user)

    async def metadata_only(self, user: str) -> bool:
        """Whether the user's grant reads headers only (``gmail.metadata`` without a read scope).

        Raises:
            InboxflowError: the user's credentials cannot be had (see ``credentials_for``).
        """
        generation = self._credential_generation[user]
        known = self._headers_only.get(user)
        if known is not None and known[0] == generation:
            return known[1]
        try:
            credentials = await self._in_pool(self._credentials_for, user)
        except Exception as exc:
            error = self._refused(user, exc)
            if error is None or error is exc:
                raise
            raise error from exc
        scopes = set(getattr(credentials, "scopes", None) or ())
        headers_only = METADATA_SCOPE in scopes and not scopes & CONTENT_SCOPES
        self._headers_only[user] = (generation, headers_only)
        return headers_only

    def _new_http(self) -> httplib2.Http:
        http = httplib2.Http(timeout=self.config.request_timeout)
        with self._opened_lock:
            self._opened.append(http)
        return http

    def _execute_one(self, user: str, build: Callable[[Any], Any]) -> Json:
        service, http = self._thread_service(user)
        request = build(service.users())
        request.http = http
        result: Json = request.execute(http=http, num_retries=0)
        return result

    def _execute_batch(
        self, user: str, calls: Sequence[PlannedCall]
    ) -> dict[str, tuple[Json | None, BaseException | None]]:
        service, http = self._thread_service(user)
        results: dict[str, tuple[Json | None, BaseException | None]] = {}

        def collect(request_id: str, response: Json | None, exc: BaseException | None) -> None:
            results[request_id] = (response, exc)

        credentials = http.credentials
        if not credentials.valid:
            # Refresh on this thread's connection: the batch library would refresh on a new
            # httplib2.Http of its own and never close it.
            credentials.refresh(google_auth_httplib2.Request(http.http))
        batch = service.new_batch_http_request(callback=collect)
        for index, call in enumerate(calls):
            request = self._call_request(service.users(), user, call)
            request.http = http
            batch.add(request, request_id=str(index))
        batch.execute(http=http)
        return results

    def _call_request(self, users: Any, user: str, call: PlannedCall) -> Any:
        headers = list(CONTACT_HEADERS) if call.format == "metadata" else None
        if call.kind == "thread":
            return users.threads().get(
                userId=user, id=call.id, format=call.format, metadataHeaders=headers
            )
        return users.messages().get(
            userId=user, id=call.id, format=call.format, metadataHeaders=headers
        )

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _settle(
        self,
        limiter: QuotaLimiter,
        failure: GmailFailure,
        attempt: int,
        what: str,
        transient_failures: int,
    ) -> None:
        """Apply a retryable failure (block or back off) or raise the classified error.

        ``attempt`` counts every try, ``transient_failures`` the 5xx and timeouts among them (the
        backoff's exponent). A stated wait over ``MAX_IN_PROCESS_WAIT_SECONDS`` is raised for the
        retry ladder; a throttle still holds the user's other calls for that long.
        """
        if failure.retry_class not in _RETRYABLE or attempt >= self.config.max_attempts:
            raise to_error(failure, what)
        if _waits_too_long(failure):
            if failure.retry_class is RetryClass.RATE_LIMIT:
                self.stats.throttled += 1
                limiter.on_throttle(MAX_IN_PROCESS_WAIT_SECONDS, concurrency=failure.concurrency)
            raise to_error(failure, what)
        self.stats.retried += 1
        if failure.retry_class is RetryClass.RATE_LIMIT:
            self.stats.throttled += 1
            delay = limiter.on_throttle(failure.wait, concurrency=failure.concurrency)
            log.info("gmail throttled call=%s reason=%s wait=%.2f", what, failure.reason, delay)
            return
        delay = failure.wait if failure.wait is not None else limiter.backoff(transient_failures)
        log.info("gmail retry call=%s status=%s wait=%.2f", what, failure.status, delay)
        await asyncio.sleep(delay)

    async def _call(
        self,
        user: str,
        method: str,
        build: Callable[[Any], Any],
        *,
        not_found: Callable[[], InboxflowError] | None = None,
    ) -> Json:
        """One call with limiter, classification and retries.

        A 404 raises ``not_found()`` when given, else ``PermanentError``.
        """
        limiter = self.limiter(user)
        cost = self.costs.cost(method)
        attempt = transient_failures = 0
        while True:
            attempt += 1
            await limiter.acquire(cost)
            self.stats.units += cost
            self.stats.calls[method] += 1
            try:
                result: Json = await self._in_pool(self._execute_one, user, build)
            except Exception as exc:
                limiter.release()
                failure = self._failure(user, exc)
                if failure.status == 404 and not_found is not None:
                    raise not_found() from exc
                if failure.retry_class is not RetryClass.RATE_LIMIT:
                    transient_failures += 1
                try:
                    await self._settle(limiter, failure, attempt, method, transient_failures)
                except InboxflowError as error:
                    raise error from exc
                continue
            limiter.release()
            limiter.on_success()
            return result

    # -- public API ----------------------------------------------------------------------------

    async def get_profile(self, user: str) -> Profile:
        """``users.getProfile`` (1 unit)."""
        body = await self._call(user, "users.getProfile", lambda u: u.getProfile(userId=user))
        return Profile(
            body["emailAddress"],
            int(body.get("messagesTotal", 0)),
            int(body.get("threadsTotal", 0)),
            str(body["historyId"]),
        )

    async def get_history_id(self, user: str) -> str:
        """The mailbox's current historyId: store it before a full sync, sync from it after."""
        return (await self.get_profile(user)).history_id

    async def list_message_ids(
        self,
        user: str,
        *,
        label_ids: Sequence[str] = (),
        query: str | None = None,
        include_spam_trash: bool = False,
        page_size: int = 500,
    ) -> AsyncIterator[list[MessageRef]]:
        """Yield pages of (id, threadId), newest first: a full sync's listing (5 units a page)."""
        token: str | None = None
        while True:
            page, token = await self.list_page(
                user,
                page_token=token,
                label_ids=label_ids,
                query=query,
                include_spam_trash=include_spam_trash,
                page_size=page_size,
            )
            yield page
            if not token:
                return

    async def list_page(
        self,
        user: str,
        *,
        page_token: str | None = None,
        label_ids: Sequence[str] = (),
        query: str | None = None,
        include_spam_trash: bool = False,
        page_size: int = 500,
    ) -> tuple[list[MessageRef], str | None]:
        """Return one ``messages.list`` page and the token of the next (None after the last)."""

        def build(u: Any) -> Any:
            return u.messages().list(
                userId=user,
                maxResults=page_size,
                pageToken=page_token,
                labelIds=list(label_ids) or None,
                q=query,
                includeSpamTrash=include_spam_trash,
            )

        body = await self._call(user, "users.messages.list", build)
        page = [MessageRef(m["id"], m.get("threadId")) for m in body.get("messages", [])]
        return page, body.get("nextPageToken") or None

    async def list_all_message_ids(self, user: str, **kwargs: Any) -> list[MessageRef]:
        """Every page of ``list_message_ids`` in one list."""
        return [ref async for page in self.list_message_ids(user, **kwargs) for ref in page]

    async def list_changes(
        self, user: str, start_history_id: str, *, history_types: Iterable[str] = HISTORY_TYPES
    ) -> HistoryChanges:
        """Changes since ``start_history_id`` (2 units a page), as an incremental sync needs.

        Raises:
            StaleHistoryError: Gmail no longer has that history (404); do a full sync.
        """
        added: dict[str, MessageRef] = {}
        deleted: list[str] = []
        changed: dict[str, LabelChange] = {}
        token: str | None = None
        types = list(history_types)

        def stale() -> InboxflowError:
            return StaleHistoryError(
                f"history {start_history_id} of {user} has expired: full resync needed"
            )

        while True:

            def build(u: Any, token: str | None = token) -> Any:
                return u.history().list(
                    userId=user,
                    startHistoryId=start_history_id,
                    historyTypes=types,
                    maxResults=500,
                    pageToken=token,
                )

            body = await self._call(user, "users.history.list", build, not_found=stale)
            for record in body.get("history", []):
                for item in record.get("messagesAdded", []):
                    msg = item["message"]
                    labels = tuple(msg.get("labelIds", ()))
                    added[msg["id"]] = MessageRef(msg["id"], msg.get("threadId"), labels)
                for item in record.get("messagesDeleted", []):
                    deleted.append(item["message"]["id"])
                    added.pop(item["message"]["id"], None)
                    changed.pop(item["message"]["id"], None)
                for key in ("labelsAdded", "labelsRemoved"):
                    for item in record.get(key, []):
                        msg = item["message"]
                        labels = tuple(msg.get("labelIds", ()))
                        history = str(record.get("id", ""))
                        changed[msg["id"]] = LabelChange(labels, history, msg.get("threadId"))
            token = body.get("nextPageToken")
            if not token:
                return HistoryChanges(
                    list(added.values()),
                    deleted,
                    list(changed),
                    str(body["historyId"]),
                    changed,
                )

    async def fetch_messages(
        self,
        user: str,
        refs: Iterable[MessageRef | str],
        *,
        need: FetchNeed = FetchNeed.RAW,
        lane: str | None = None,
        deadline: float | None = None,
    ) -> dict[str, FetchOutcome]:
        """Fetch each distinct id once through the planner, in batches of at most 25.

        ``deadline`` (``time.monotonic()`` seconds): past it, the messages not fetched yet fail
        with ``StageTimeoutError`` and what was fetched is returned, so a caller's own deadline
        never throws away the messages already fetched.

        Returns one outcome per id: ``FetchedMessage``, ``MessageGone`` (404, deleted) or
        ``MessageFailed``. Throttles and transient failures are retried within
        ``max_attempts`` per call; a call whose retries run out fails its own messages only, and
        when Gmail asks for a wait over ``MAX_IN_PROCESS_WAIT_SECONDS`` the messages not fetched
        yet fail with that wait: what was fetched is kept either way. (Failing the whole batch
        instead made every retry fetch everything again: under 30 % injected 429s, where each
        throttle blocks the user until its Retry-After, a mailbox never got through.) With
        ``lane``, every batch (retries too) first waits for the lane's share of the user's quota
        (``lane_limiter``), then for the user's limiter like any call.

        Raises:
            RateLimitedError, QuotaExceededError, TransientError, StageTimeoutError: no message
                could be fetched (the first failure), or the daily quota is gone
                (``retry_after`` says when to come back).
            PermanentError: Gmail refused a call for good (e.g. 400, 403 domainPolicy).
        """
        wanted = [r if isinstance(r, MessageRef) else MessageRef(r) for r in refs]
        headers_only = need is not FetchNeed.HEADERS and await self.metadata_only(user)
        if headers_only:
            need = FetchNeed.HEADERS
        outcomes: dict[str, FetchOutcome] = {}
        failed: dict[str, Exception] = {}
        pending = plan_fetch(wanted, need, self.costs)
        limiter = self.limiter(user)
        share = self.lane_limiter(lane, user) if lane is not None else None
        attempts: Counter[PlannedCall] = Counter()
        transient_failures: Counter[PlannedCall] = Counter()  # the backoff's exponent
        while pending:
            parts = max(1, min(self.config.batch_size, limiter.concurrency))
            batches = chunk_calls(pending, self.costs, parts, limiter.capacity)
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    rounds = await asyncio.gather(
                        *(self._run_batch(user, b, need, outcomes, share) for b in batches)
                    )
            except TimeoutError:
                late = StageTimeoutError(f"fetching {len(pending)} calls for {user}: out of time")
                failed.update(dict.fromkeys(_message_ids(pending), late))
                break
            pending = [call for r in rounds for call in (*r.follow_ups, *r.blocked)]
            retry: list[PlannedCall] = []
            worst_transient = 0
            for call, failure in (item for r in rounds for item in r.failed):
                attempts[call] += 1
                if _waits_too_long(failure):
                    # Gmail wants this user left alone for a while: stop here.
                    error = to_error(failure, f"{call.method} {call.id} for {user}")
                    left = [call, *pending, *retry, *(c for r in rounds for c, _ in r.failed)]
                    failed.update(dict.fromkeys(_message_ids(left), error))
                    pending, retry, worst_transient = [], [], 0
                    break
                if attempts[call] >= self.config.max_attempts:
                    error = to_error(failure, f"{call.method} {call.id} for {user}")
                    failed.update(dict.fromkeys(_message_ids([call]), error))
                    continue
                if failure.retry_class is not RetryClass.RATE_LIMIT:
                    # Throttles do not count here: a call throttled thrice, then given a 503,
                    # is on its first 5xx retry.
                    transient_failures[call] += 1
                    worst_transient = max(worst_transient, transient_failures[call])
                retry.append(call)
            pending.extend(retry)
            if worst_transient:
                # Throttles are already enforced by the limiter; 5xx and timeouts back off here.
                self.stats.retried += 1
                await asyncio.sleep(limiter.backoff(worst_transient))
        failed = {key: error for key, error in failed.items() if key not in outcomes}
        if failed and not outcomes:
            raise next(iter(failed.values()))  # nothing came through: the batch failed
        outcomes.update({key: MessageFailed(key, error) for key, error in failed.items()})
        if headers_only:
            return {key: _headers_as_message(outcome) for key, outcome in outcomes.items()}
        return outcomes

    async def _run_batch(
        self,
        user: str,
        calls: list[PlannedCall],
        need: FetchNeed,
        outcomes: dict[str, FetchOutcome],
        share: QuotaLimiter | None = None,
    ) -> _Round:
        """Send one batch; record outcomes; return follow-ups and retryable failures.

        ``share``: a lane's limiter, waited on before the user's (its concurrency is the user's).
        Raises the classified error at once for QUOTA and PERMANENT failures.
        """
        limiter = self.limiter(user)
        units = sum(self.costs.cost(c.method) for c in calls)
        if share is not None:
            # Slots stay with the user's limiter: the lane paces units only.
            await share.acquire(units, slots=0)
        await limiter.acquire(units, len(calls))
        self.stats.units += units
        self.stats.batches += 1
        for call in calls:
            self.stats.calls[call.method] += 1
        outcome = _Round()
        try:
            results = await self._in_pool(self._execute_batch, user, calls)
        except asyncio.CancelledError:
            # A deadline gave up on the batch (it still runs out in its thread): free its slots,
            # or the user's later calls would wait on them for good.
            limiter.release(len(calls))
            raise
        except Exception as exc:
            limiter.release(len(calls))
            failure = self._failure(user, exc)
            if failure.retry_class not in _RETRYABLE:
                raise to_error(failure, "batch") from exc
            if failure.retry_class is RetryClass.RATE_LIMIT:
                self.stats.throttled += 1
                limiter.on_throttle(_in_process_wait(failure.wait), concurrency=failure.concurrency)
            outcome.failed = [(call, failure) for call in calls]
            return outcome
        limiter.release(len(calls))
        throttle: GmailFailure | None = None
        for index, call in enumerate(calls):
            response, part_exc = results.get(str(index), (None, None))
            if part_exc is None and response is not None:
                outcome.follow_ups.extend(self._accept(call, response, need, outcomes))
                continue
            failure = classify(part_exc) if part_exc is not None else _MISSING_PART
            if failure.status == 404:
                outcome.follow_ups.extend(self._gone(call, need, outcomes))
            elif failure.retry_class not in _RETRYABLE:
                if failure.status == 401:
                    self.forget_credentials(user)
                raise to_error(failure, call.method) from part_exc
            elif failure.retry_class is RetryClass.RATE_LIMIT and throttle is not None:
                # A user-rate throttle holds the user until its time: the parts after the first
                # throttled one were refused for that, not for themselves, and do not spend an
                # attempt (else a throttled batch burned the retries of every part behind it).
                outcome.blocked.append(call)
                if (failure.wait or 0) > (throttle.wait or 0):
                    throttle = failure
            else:
                outcome.failed.append((call, failure))
                if failure.retry_class is RetryClass.RATE_LIMIT:
                    throttle = failure
        if throttle is not None:
            self.stats.throttled += 1
            limiter.on_throttle(_in_process_wait(throttle.wait), concurrency=throttle.concurrency)
        else:
            limiter.on_success()
        return outcome

    def _gone(
        self, call: PlannedCall, need: FetchNeed, outcomes: dict[str, FetchOutcome]
    ) -> list[PlannedCall]:
        if call.kind == "message":
            outcomes[call.id] = MessageGone(call.id)
            return []
        # A vanished thread: ask for its messages one by one (some may have moved threads).
        return [message_call(i, need) for i in call.message_ids]

    def _accept(
        self, call: PlannedCall, response: Json, need: FetchNeed, outcomes: dict[str, FetchOutcome]
    ) -> list[PlannedCall]:
        """Record a successful response; return follow-up calls it makes necessary."""
        if call.kind == "message":
            raw = _b64decode(response["raw"]) if call.format == "raw" else None
            outcomes[call.id] = _to_fetched(response, raw, exact=raw is not None)
            return []
        follow_ups = []
        by_id = {m["id"]: m for m in response.get("messages", [])}
        for message_id in call.message_ids:
            resource = by_id.get(message_id)
            if resource is None:
                follow_ups.append(message_call(message_id, need))
            elif call.format == "metadata":
                outcomes[message_id] = _to_fetched(resource, None, exact=False)
            elif has_attachment_refs(resource.get("payload", {})):
                follow_ups.append(message_call(message_id, FetchNeed.RAW))
            else:
                raw = rebuild_mime(resource["payload"])
                outcomes[message_id] = _to_fetched(resource, raw, exact=False)
        return follow_ups

    def close(self) -> None:
        """Stop the thread pool (pending calls finish first)."""
        self._pool.shutdown(wait=True)
        with self._opened_lock:
            for http in self._opened:
                http.close()
            self._opened.clear()
