"""Gmail push receiver: Pub/Sub push deliveries in, ``SyncRequested`` events out.

Gmail announces a changed mailbox by publishing ``{emailAddress, historyId}`` to a Pub/Sub topic;
a push subscription POSTs each message here with an OIDC token. The receiver checks the token,
decodes the envelope, looks up the account and asks for an incremental sync of that user. The
``historyId`` is only a hint: the sync lists history from its own stored checkpoint.

Answers are Pub/Sub acknowledgements, so each one is chosen for what Pub/Sub does next:

- 204: done (a sync request covering this notification is in Kafka), or dropped on purpose
  (unknown or inactive account): redelivering would never help.
- 400 (malformed envelope) and 401 (token refused): nothing was produced.
- 503: Kafka, Postgres or the certificate endpoint failed; Pub/Sub redelivers later.

Per user, at most one request is produced per coalescing window, and every notification is
answered only once a request that started after it arrived has been acknowledged by Kafka
(``TrailingCoalescer``), so a burst costs one or two syncs and none of its changes is missed.

The receiver gets its publisher, accounts and verifier injected; ``inboxflow.push`` builds the
real ones. This module must not read the environment or import ``inboxflow`` or ``devstack``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import aiohttp
from aiohttp import web
from aiokafka.errors import KafkaError
from google.auth import exceptions as google_auth_exceptions
from google.auth import transport
from google.oauth2 import id_token

from db import accounts
from db.accounts import Account, AccountState
from db.pool import LazyPool
from schemas.errors import (
    InboxflowError,
    PermanentError,
    TransientError,
    redact_secrets,
    safe_error_message,
    safe_error_text,
)
from schemas.models import SyncRequested
from schemas.serde import Serde
from streams.runtime.publisher import Publisher
from streams.stages.base import event_record

log = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
PUSH_PATH = "/gmail/push"
HEALTH_PATH = "/healthz"
_BEARER = re.compile(r"^Bearer\s+(\S+)$", re.IGNORECASE)
_MAX_AGE = re.compile(r"max-age=(\d+)")


# -- errors ------------------------------------------------------------------------------------


class PushRefusedError(PermanentError):
    """The push delivery was refused; redelivering the same request cannot help."""

    status: ClassVar[int] = 400


class MalformedPushError(PushRefusedError):
    """The body is not a Pub/Sub push envelope of a Gmail notification."""


class UnauthorizedPushError(PushRefusedError):
    """The push delivery's OIDC token is missing, forged, expired or meant for someone else."""

    status = 401


# -- the envelope ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushNotification:
    """One Gmail notification as Pub/Sub pushed it.

    Attributes:
        email_address: the mailbox that changed.
        history_id: the mailbox's history id at the change (a hint, not a checkpoint).
        message_id: the Pub/Sub message id (the same on every redelivery).
        subscription: the subscription that pushed it, if named.
    """

    email_address: str
    history_id: int
    message_id: str
    subscription: str | None = None


def _b64decode(data: str) -> bytes:
    padded = data + "=" * (-len(data) % 4)
    if "-" in data or "_" in data:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded, validate=True)


def decode_push_envelope(body: bytes) -> PushNotification:
    """Decode a Pub/Sub push body carrying a Gmail notification. Pure.

    Accepts ``data`` in standard or URL-safe base64, padded or not, and ``historyId`` as a number
    or a string of digits.

    Raises:
        MalformedPushError: the body is not such an envelope; the message says what is wrong.
    """
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedPushError(f"push body is not JSON: {safe_error_text(exc)}") from exc
    message = envelope.get("message") if isinstance(envelope, dict) else None
    if not isinstance(message, dict):
        raise MalformedPushError("push body has no 'message' object")
    data = message.get("data")
    if not isinstance(data, str) or not data:
        raise MalformedPushError("push message has no 'data' string")
    try:
        payload = json.loads(_b64decode(data))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise MalformedPushError(
            f"push message data is not base64-encoded JSON: {safe_error_text(exc)}"
        ) from exc
    if not isinstance(payload, dict):
        raise MalformedPushError("push message data is not a JSON object")
    address = payload.get("emailAddress")
    if not isinstance(address, str) or "@" not in address:
        raise MalformedPushError("Gmail notification has no 'emailAddress'")
    history = payload.get("historyId")
    if isinstance(history, str) and history.isdigit():
        history = int(history)
    if not isinstance(history, int) or isinstance(history, bool) or history < 0:
        raise MalformedPushError("Gmail notification has no numeric 'historyId'")
    message_id = message.get("messageId", message.get("message_id", ""))
    subscription = envelope.get("subscription")
    return PushNotification(
        email_address=address.strip(),
        history_id=history,
        message_id=str(message_id),
        subscription=subscription if isinstance(subscription, str) else None,
    )


# -- token verification ------------------------------------------------------------------------


class PushVerifier(Protocol):
    """Decides whether a push delivery really comes from the configured subscription."""

    async def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """Return the token's claims given the ``Authorization`` header.

        Raises:
            UnauthorizedPushError: the token is missing or refused (answer 401).
            TransientError: the verifier cannot decide now (answer 503).
        """
        ...


class UnverifiedPush:
    """Accepts every delivery: only for a receiver no one else can reach (local runs)."""

    async def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """Return no claims and refuse nothing."""
        return {}


class _Fetched(transport.Request):
    """Serves ``verify_token``'s certificate request from certificates fetched asynchronously."""

    def __init__(self, url: str, body: bytes) -> None:
        self._url, self._body = url, body

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> transport.Response:
        if url != self._url or method != "GET":
            raise google_auth_exceptions.TransportError(f"unexpected request {method} {url}")  # type: ignore[no-untyped-call]
        return _Response(self._body)


class _Response(transport.Response):
    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def status(self) -> int:
        return 200

    @property
    def headers(self) -> Mapping[str, str]:
        return {"content-type": "application/json"}

    @property
    def data(self) -> bytes:
        return self._data


class OidcPushVerifier:
    """Verifies Pub/Sub's OIDC tokens against Google's (or an emulator's) certificates.

    The token must be signed by a key the certificates URL lists, unexpired, issued by
    ``accounts.google.com``, for ``audience``, and, when ``service_account`` is given, carry that
    verified ``email``. Certificates are fetched asynchronously and cached for the ``max-age`` the
    endpoint gives; a token naming an unknown key refetches them at most once per
    ``refresh_floor_seconds`` (keys rotate). A failed fetch keeps using the cached certificates.

    Args:
        audience: the push subscription's audience (by default its endpoint URL).
        service_account: the expected ``email`` claim; ``None`` accepts any Google-signed token
            for the audience.
        certs_url: Google's v1 certificates (``{kid: PEM certificate}``) or an emulator's.
        clock_skew_seconds: leeway for ``iat`` and ``exp``.
        fetch_timeout: seconds for one certificates request.
        default_max_age: cache time when the endpoint sends no ``max-age``.
        refresh_floor_seconds: least time between two fetches forced by unknown keys.
    """

    def __init__(
        self,
        *,
        audience: str,
        service_account: str | None = None,
        certs_url: str = GOOGLE_CERTS_URL,
        clock_skew_seconds: int = 10,
        fetch_timeout: float = 10.0,
        default_max_age: float = 300.0,
        refresh_floor_seconds: float = 60.0,
    ) -> None:
        self.audience = audience
        self.service_account = service_account
        self.certs_url = certs_url
        self.clock_skew_seconds = clock_skew_seconds
        self._fetch_timeout = fetch_timeout
        self._default_max_age = default_max_age
        self._refresh_floor = refresh_floor_seconds
        self._certs: bytes | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self._expires_at = float("-inf")
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the HTTP session used for certificates."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """Return the token's claims; see the class for what is checked.

        Raises:
            UnauthorizedPushError: no bearer token, or the token is refused.
            TransientError: certificates could not be fetched and none are cached.
        """
        match = _BEARER.match((authorization or "").strip())
        if match is None:
            raise UnauthorizedPushError("no bearer token in the Authorization header")
        token = match.group(1)
        kid = _key_id(token)
        certs = await self._current_certs()
        if kid not in self._kids and time.monotonic() - self._fetched_at >= self._refresh_floor:
            certs = await self._current_certs(force=True)
        try:
            claims = id_token.verify_token(
                token,
                _Fetched(self.certs_url, certs),
                audience=self.audience,
                certs_url=self.certs_url,
                clock_skew_in_seconds=self.clock_skew_seconds,
            )
        except (ValueError, google_auth_exceptions.GoogleAuthError) as exc:
            raise UnauthorizedPushError(f"push token refused: {_token_refusal(exc)}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise UnauthorizedPushError(f"push token issued by {claims.get('iss')!r}, not Google")
        if self.service_account is not None and (
            claims.get("email") != self.service_account or claims.get("email_verified") is not True
        ):
            raise UnauthorizedPushError(
                f"push token is for {claims.get('email')!r}, not {self.service_account!r}"
            )
        return dict(claims)

    async def _current_certs(self, *, force: bool = False) -> bytes:
        async with self._lock:
            now = time.monotonic()
            cached = self._certs
            refetch = force and now - self._fetched_at >= self._refresh_floor
            if cached is not None and now < self._expires_at and not refetch:
                return cached
            try:
                body, max_age = await self._fetch()
            except TransientError:
                if self._certs is None:
                    raise
                log.warning("push certs refresh failed, using cached url=%s", self.certs_url)
                return self._certs
            self._certs, self._fetched_at = body, now
            self._expires_at = now + max_age
            self._kids = frozenset(json.loads(body))
            return body

    async def _fetch(self) -> tuple[bytes, float]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self._fetch_timeout)
        try:
            async with self._session.get(self.certs_url, timeout=timeout) as response:
                body = await response.read()
                status = response.status
                cache_control = response.headers.get("Cache-Control", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(
                f"cannot fetch push certs from {self.certs_url}: {safe_error_text(exc)}"
            ) from exc
        if status != 200:
            raise TransientError(f"push certs at {self.certs_url} answered {status}")
        try:
            certs = json.loads(body)
        except ValueError as exc:
            raise TransientError(f"push certs at {self.certs_url} are not JSON") from exc
        if not isinstance(certs, dict) or "keys" in certs:
            raise TransientError(
                f"push certs at {self.certs_url} are not {{key id: PEM certificate}} (use the v1 "
                "certs URL)"
            )
        found = _MAX_AGE.search(cache_control)
        return body, float(found.group(1)) if found else self._default_max_age


def _key_id(token: str) -> str | None:
    """The ``kid`` of a JWT's header, without verifying anything."""
    try:
        header = json.loads(_b64decode(token.split(".", 1)[0]))
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise UnauthorizedPushError("push token is not a JWT") from exc
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


# -- accounts ----------------------------------------------------------------------------------


class AccountDirectory(Protocol):
    """What the receiver needs from the ``accounts`` table."""

    async def account(self, user_id: str) -> Account | None:
        """Return the account of ``user_id``, None if it is not registered.

        Raises:
            TransientError: the database cannot be reached.
        """
        ...

    async def mark_sync_requested(self, user_id: str, at: datetime) -> None:
        """Note that Kafka acknowledged a sync request for ``user_id`` at ``at``.

        Raises:
            TransientError: the database cannot be reached.
        """
        ...


class PostgresAccounts:
    """``AccountDirectory`` over a small connection pool, opened on first use.

    Args:
        conninfo: libpq connection string of the database holding ``accounts``.
        max_size: connections at most.
        timeout: seconds to wait for a connection before ``TransientError``.
    """

    def __init__(self, conninfo: str, *, max_size: int = 4, timeout: float = 5.0) -> None:
        self._pool = LazyPool(
            conninfo,
            what="accounts database",
            max_size=max_size,
            timeout=timeout,
            autocommit=True,
        )

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def account(self, user_id: str) -> Account | None:
        """Return the account of ``user_id`` (any state), None if it is not registered."""
        async with self._pool.connection() as conn:
            found = await accounts.find_accounts(conn, [user_id])
        return found[0] if found else None

    async def mark_sync_requested(self, user_id: str, at: datetime) -> None:
        """Set the account's ``last_sync_requested_at`` (never backwards)."""
        async with self._pool.connection() as conn:
            await accounts.mark_sync_requested(conn, [user_id], at)


# -- coalescing --------------------------------------------------------------------------------


@dataclass
class _KeyState:
    running: asyncio.Task[None] | None = None
    follow_up: asyncio.Future[None] | None = None
    quiet_until: float = float("-inf")  # no new action starts before this (monotonic)


class TrailingCoalescer:
    """Runs ``action(key)`` at most once per ``window`` seconds per key, never missing a call.

    ``request(key)`` returns once an action for ``key`` that started after the call has finished
    (and raises that action's error). A call that finds the key idle and quiet starts the action
    at once; a call that finds an action running, or one finished less than ``window`` seconds
    ago, joins a single follow-up action that starts when both have passed. So a burst of calls
    costs one action at its start and one at its end.

    Args:
        action: what to run per key; its failure is every waiting caller's failure.
        window: seconds between the end of one action of a key and the start of the next.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        action: Callable[[str], Awaitable[None]],
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._action = action
        self.window = window
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def request(self, key: str) -> bool:
        """Wait until an action for ``key`` started after this call has finished.

        Returns:
            True when this call started the action, False when it joined a follow-up.

        Raises:
            Exception: whatever the covering action raised.
        """
        state = self._keys.setdefault(key, _KeyState())
        if state.follow_up is None and state.running is None and self._clock() >= state.quiet_until:
            state.running = self._start(key, state)
            await asyncio.shield(state.running)
            return True
        if state.follow_up is None:
            state.follow_up = asyncio.get_running_loop().create_future()
            state.follow_up.add_done_callback(_consume_outcome)
            trail = asyncio.create_task(self._trail(key, state, state.follow_up))
            self._tasks.add(trail)
            trail.add_done_callback(self._tasks.discard)
        await asyncio.shield(state.follow_up)
        return False

    def _start(self, key: str, state: _KeyState) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(key, state))
        task.add_done_callback(_consume_outcome)
        return task

    async def _run(self, key: str, state: _KeyState) -> None:
        try:
            await self._action(key)
        finally:
            state.running = None
            state.quiet_until = self._clock() + self.window

    async def _trail(self, key: str, state: _KeyState, follow_up: asyncio.Future[None]) -> None:
        try:
            while state.running is not None or self._clock() < state.quiet_until:
                if state.running is not None:
                    await asyncio.wait([state.running])
                else:
                    await asyncio.sleep(state.quiet_until - self._clock())
            # Callers arriving from here on wait for the next follow-up: this one may have
            # started listing before their change.
            state.follow_up = None
            state.running = self._start(key, state)
            await state.running
        except asyncio.CancelledError:
            follow_up.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller waiting on it
            follow_up.set_exception(exc)
            return
        follow_up.set_result(None)

    async def close(self) -> None:
        """Cancel pending follow-ups (their callers fail) and wait for running actions."""
        for task in list(self._tasks):
            task.cancel()
        running = [s.running for s in self._keys.values() if s.running is not None]
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)


def _consume_outcome(future: asyncio.Future[None]) -> None:
    # Callers may all have gone (client disconnects); mark the error as seen so asyncio does
    # not report it as never retrieved. Callers still waiting get it as usual.
    if not future.cancelled():
        future.exception()


# -- the receiver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushReceiverConfig:
    """Receiver knobs; ``inboxflow.push`` fills them from ``Settings``.

    Attributes:
        sync_requested_topic: where sync requests go (the catalogue's ``sync_requested``).
        coalesce_seconds: least time between two requests for one user; notifications in between
            wait for one follow-up request. Keep it well under the subscription's ack deadline
            (10 s by default): a notification may wait this long plus a produce for its answer.
        produce_timeout: seconds a produce may take before the answer is 503.
        max_body_bytes: larger bodies are refused (Gmail's are about 200 bytes).
        shutdown_timeout: seconds deliveries in progress get to finish when serving stops.
    """

    sync_requested_topic: str
    coalesce_seconds: float = 1.0
    produce_timeout: float = 8.0
    max_body_bytes: int = 64 * 1024
    shutdown_timeout: float = 15.0


_PUBLISH_FAILURES = (KafkaError, TimeoutError, InboxflowError, OSError)


class PushReceiver:
    """The HTTP endpoint Pub/Sub pushes Gmail notifications to.

    ``POST /gmail/push`` takes one delivery; ``GET /healthz`` answers 200 while serving. Run it
    with ``async with receiver.serving(host, port)`` or mount ``app()`` elsewhere.

    Args:
        config: topic and coalescing knobs.
        publisher: produces the ``SyncRequested`` events (acknowledged before answering).
        serde: the deployment's wire format.
        accounts: account lookup and bookkeeping.
        verifier: decides whether a delivery is authentic.
        now: wall clock for ``requested_at``.
    """

    def __init__(
        self,
        config: PushReceiverConfig,
        *,
        publisher: Publisher,
        serde: Serde,
        accounts: AccountDirectory,
        verifier: PushVerifier,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self._publisher = publisher
        self._serde = serde
        self._accounts = accounts
        self._verifier = verifier
        self._now = now
        self.coalescer = TrailingCoalescer(self._request_sync, config.coalesce_seconds)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_post(PUSH_PATH, self.handle_push)
        app.router.add_get(HEALTH_PATH, self.handle_health)
        return app

    @asynccontextmanager
    async def serving(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on ``host:port`` (0: a free port) and yield the push endpoint's URL.

        On exit the port closes first and deliveries in progress get up to
        ``shutdown_timeout`` seconds to finish; any still waiting then fail unanswered (Pub/Sub
        redelivers them).
        """
        runner = web.AppRunner(
            self.app(), access_log=None, shutdown_timeout=self.config.shutdown_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0]
            self.url = f"http://{host}:{bound[1]}{PUSH_PATH}"
            log.info("push receiver listening url=%s", self.url)
            yield self.url
        finally:
            await runner.cleanup()
            await self.coalescer.close()

    async def handle_health(self, request: web.Request) -> web.Response:
        """``GET /healthz``: 200 while the process serves."""
        return web.json_response({"status": "ok"})

    async def handle_push(self, request: web.Request) -> web.Response:
        """``POST /gmail/push``: one Pub/Sub delivery; see the module for the answers."""
        try:
            await self._verifier.verify(request.headers.get("Authorization"))
        except UnauthorizedPushError as exc:
            log.warning("push refused status=%d reason=%s", exc.status, exc)
            headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            return _answer(exc.status, safe_error_message(exc), headers)
        except TransientError as exc:
            log.warning("push deferred status=503 reason=%s", exc)
            return _answer(503, safe_error_message(exc))
        try:
            note = decode_push_envelope(await request.read())
        except MalformedPushError as exc:
            log.warning("push refused status=%d reason=%s", exc.status, exc)
            return _answer(exc.status, safe_error_message(exc))
        try:
            account = await self._accounts.account(note.email_address)
        except TransientError as exc:
            log.warning("push deferred status=503 user=%s reason=%s", note.email_address, exc)
            return _answer(503, safe_error_message(exc))
        if account is None or account.state is not AccountState.ACTIVE:
            state = "unknown" if account is None else account.state.value
            log.info(
                "push dropped user=%s account=%s message_id=%s",
                note.email_address,
                state,
                note.message_id,
            )
            return web.Response(status=204)
        try:
            started = await self.coalescer.request(account.user_id)
        except _PUBLISH_FAILURES as exc:
            log.warning(
                "push deferred status=503 user=%s message_id=%s reason=%r",
                account.user_id,
                note.message_id,
                exc,
            )
            return _answer(503, f"sync request not stored: {safe_error_text(exc)}")
        log.info(
            "push accepted user=%s history_id=%d message_id=%s coalesced=%s",
            account.user_id,
            note.history_id,
            note.message_id,
            not started,
        )
        return web.Response(status=204)

    async def _request_sync(self, user_id: str) -> None:
        """Produce one incremental SyncRequested and wait for Kafka; then mark the account."""
        at = self._now()
        event = SyncRequested(
            user_id=user_id,
            sync_id=f"push-{uuid.uuid4().hex}",
            full=False,
            reason="push",
            requested_at=at,
        )
        record = event_record(self._serde, self.config.sync_requested_topic, event)
        async with asyncio.timeout(self.config.produce_timeout):
            await self._publisher.publish([record])
        try:
            await self._accounts.mark_sync_requested(user_id, at)
        except TransientError as exc:
            # The request is in Kafka; only the bookkeeping is late (the scheduler may repeat it).
            log.warning("push could not mark account user=%s reason=%s", user_id, exc)
        log.info("push requested sync user=%s sync_id=%s", user_id, event.sync_id)


def _token_refusal(exc: BaseException) -> str:
    # google-auth's InvalidValue says what is wrong with a well-formed token (expired, wrong
    # audience); its MalformedError quotes the token's segments, so only its type is told.
    if isinstance(exc, google_auth_exceptions.InvalidValue):
        return redact_secrets(str(exc))
    return safe_error_text(exc)


def _answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
