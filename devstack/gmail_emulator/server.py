"""The emulator's HTTP face: an aiohttp server that google-api-python-client talks to like Google.

``GmailEmulator`` runs as an asyncio task (``async with``) or in a background thread with its own
loop (``with``), on a free 127.0.0.1 port unless told otherwise; ``.url`` is the root URL to put in
the discovery document. It also lets tests add messages, expire history, change faults and read
accounting, and it pushes notifications of watched mailboxes (``push.py``) and serves the
certificate of their tokens at ``.certs_url``. It must not import ``streams``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from aiohttp import web

from devstack.gmail_emulator import envelopes
from devstack.gmail_emulator.accounting import AccountingSnapshot
from devstack.gmail_emulator.api import ApiRequest, ApiResponse, EmulatorState, form_query
from devstack.gmail_emulator.batch import (
    MAX_PARTS,
    BatchFormatError,
    InnerRequest,
    build_batch_response,
    parse_batch,
)
from devstack.gmail_emulator.faults import FaultConfig, FaultInjector
from devstack.gmail_emulator.generator import generate_messages
from devstack.gmail_emulator.mailbox import Mailbox
from devstack.gmail_emulator.oauth import (
    AUTH_PATH,
    REVOKE_PATH,
    TOKEN_PATH,
    OAuthConfig,
    OAuthServer,
)
from devstack.gmail_emulator.push import CERTS_PATH, OidcSigner, PushConfig, PushStats
from devstack.gmail_emulator.quota import QuotaConfig, QuotaModel

log = logging.getLogger(__name__)
BATCH_PATHS = ("/batch", "/batch/gmail/v1")
MAX_UPLOAD = 157_286_400  # messages.insert/import mediaUpload.maxSize


def _json_response(response: ApiResponse) -> web.Response:
    if response.status == 204:
        return web.Response(status=204, headers=response.headers)
    return web.Response(
        status=response.status,
        body=json.dumps(response.body).encode(),
        content_type="application/json",
        charset="utf-8",
        headers=response.headers,
    )


class GmailEmulator:
    """A Gmail API emulator with quotas, faults and accounting.

    Args:
        quota: quota model knobs (2026 table by default).
        faults: fault injection knobs (none by default).
        host: interface to bind; keep loopback.
        port: 0 picks a free port.
        history_retention: history records kept per user before old ids give 404.
        push: where and how watched mailboxes' changes are pushed (nowhere by default).
        oauth: Google's OAuth side (``oauth.py``); Gmail calls are anonymous by default.
    """

    def __init__(
        self,
        *,
        quota: QuotaConfig | None = None,
        faults: FaultConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        history_retention: int = 100_000,
        push: PushConfig | None = None,
        oauth: OAuthConfig | None = None,
    ) -> None:
        self.state = EmulatorState(quota, faults, history_retention, push=push, oauth=oauth)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Root URL (``http://127.0.0.1:PORT/``), the discovery ``rootUrl`` to use."""
        return f"http://{self.host}:{self.port}/"

    def app(self) -> web.Application:
        """The aiohttp application (routes everything through one handler)."""
        app = web.Application(client_max_size=MAX_UPLOAD + 1_000_000)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        return app

    async def start(self) -> None:
        """Bind and serve on the current loop."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.state.oauth.base_url = self.url
        self.state.push.bind(asyncio.get_running_loop())
        log.info("gmail emulator listening url=%s", self.url)

    async def stop(self) -> None:
        """Stop serving (pending push deliveries are cancelled)."""
        await self.state.push.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GmailEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> GmailEmulator:
        """Serve from a daemon thread with its own event loop; return once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._stopped = asyncio.Event()
            try:
                await self.start()
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                raise
            finally:
                ready.set()
            await self._stopped.wait()
            await self.stop()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(main())
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="gmail-emulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop_thread(self) -> None:
        """Stop a server started with ``start_in_thread`` and join its thread."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> GmailEmulator:
        return self.start_in_thread()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_thread()

    # -- mailboxes -----------------------------------------------------------------------------

    def add_user(self, email_address: str, *, messages: int = 0, seed: int = 0) -> Mailbox:
        """Create a user, optionally with ``messages`` generated messages (no history records).

        Generated messages are the mailbox's starting state: they have no history records, so the
        profile's ``historyId`` after this call is where incremental sync starts.
        """
        with self.state.lock:
            box = self.state.add_user(email_address, seed)
            for gen in generate_messages(seed, messages, email_address):
                box.add(gen.raw, gen.label_ids, gen.internal_date, record_history=False)
            return box

    def mailbox(self, user: str) -> Mailbox:
        """The user's mailbox (``me`` allowed); mutate only under ``state.lock``."""
        box = self.state.mailbox_for(user)
        if box is None:
            raise KeyError(user)
        return box

    def add_message(
        self,
        user: str,
        raw: bytes,
        label_ids: Iterable[str] = ("INBOX", "UNREAD"),
        internal_date: int | None = None,
    ) -> str:
        """Deliver ``raw`` to ``user`` as new mail (moves historyId, adds ``messageAdded``)."""
        with self.state.lock:
            return self.mailbox(user).add(raw, label_ids, internal_date).id

    def delete_message(self, user: str, message_id: str) -> bool:
        """Delete permanently (``messageDeleted``; later gets return 404)."""
        with self.state.lock:
            return self.mailbox(user).delete(message_id)

    def modify_labels(
        self, user: str, message_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> None:
        """Change labels (``labelAdded``/``labelRemoved`` history)."""
        with self.state.lock:
            self.mailbox(user).modify(message_id, add, remove)

    def expire_history(self, user: str, keep: int = 0) -> None:
        """Make every stored ``historyId`` of ``user`` stale (history.list answers 404)."""
        with self.state.lock:
            self.mailbox(user).expire_history(keep)

    def message_ids(self, user: str) -> list[str]:
        """Ids of the user's messages (any label)."""
        with self.state.lock:
            return list(self.mailbox(user).messages)

    # -- knobs and accounting ------------------------------------------------------------------

    @property
    def accounting(self) -> AccountingSnapshot:
        """A consistent copy of the counters."""
        return self.state.accounting.snapshot()

    def reset_accounting(self) -> None:
        """Zero the counters."""
        self.state.accounting.reset()

    def set_faults(self, faults: FaultConfig) -> None:
        """Replace the fault knobs (takes effect on the next request)."""
        self.state.faults = FaultInjector(faults)

    def set_quota(self, quota: QuotaConfig) -> None:
        """Replace the quota model; buckets start full again."""
        self.state.quota = QuotaModel(quota)

    def set_push(self, push: PushConfig) -> None:
        """Replace the push knobs (endpoint, audience, drops...); the signing key stays."""
        self.state.push.configure(push)

    @property
    def push_stats(self) -> PushStats:
        """A copy of the push counters."""
        return self.state.push.stats

    @property
    def push_signer(self) -> OidcSigner:
        """The key that signs push tokens (its certificate is served at ``certs_url``)."""
        return self.state.push.signer

    @property
    def oauth(self) -> OAuthServer:
        """Google's OAuth side: clients, consent, service accounts, revocation, token checks."""
        return self.state.oauth

    def set_oauth(self, oauth: OAuthConfig) -> None:
        """Replace the OAuth knobs (e.g. require bearer tokens from now on)."""
        self.state.oauth.configure(oauth)

    @property
    def certs_url(self) -> str:
        """Where the push tokens' certificates are served, in Google's v1 certs format."""
        return f"http://{self.host}:{self.port}{CERTS_PATH}"

    def watching(self, user: str) -> bool:
        """Whether ``user``'s mailbox has a live ``users.watch``."""
        with self.state.lock:
            watch = self.state.watches.get(self.mailbox(user).email_address)
            return watch is not None and watch.expiration_ms > time.time() * 1000

    # -- HTTP ----------------------------------------------------------------------------------

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path in BATCH_PATHS and request.method == "POST":
            return await self._serve_batch(
                request.headers.get("Content-Type", ""), body, request.headers.get("Authorization")
            )
        if request.path in (AUTH_PATH, TOKEN_PATH, REVOKE_PATH):
            return self._serve_oauth(request, body)
        if request.path == "/_emulator/accounting":
            return web.json_response(_snapshot_json(self.accounting))
        if request.path == CERTS_PATH and request.method == "GET":
            # Google's certs answer is cacheable for hours; a short max-age keeps tests honest.
            return web.json_response(
                self.state.push.signer.certs(), headers={"Cache-Control": "public, max-age=300"}
            )
        method, query = request.method, {k: request.query.getall(k) for k in request.query}
        if request.headers.get("X-HTTP-Method-Override"):
            method = request.headers["X-HTTP-Method-Override"].upper()
            for key, values in form_query(body).items():
                query.setdefault(key, []).extend(values)
            body = b""
        headers = {k.lower(): v for k, v in request.headers.items()}
        response = await self.state.handle(ApiRequest(method, request.path, query, body, headers))
        return _json_response(response)

    def _serve_oauth(self, request: web.Request, body: bytes) -> web.Response:
        """Google's authorization, token and revocation endpoints (``oauth.py``)."""
        oauth = self.state.oauth
        if request.path == AUTH_PATH and request.method == "GET":
            status, text, headers = oauth.authorize(dict(request.query))
            return web.Response(status=status, text=text, headers=headers)
        form = {k: v[0] for k, v in form_query(body).items() if v}
        if request.path == TOKEN_PATH and request.method == "POST":
            status, answer = oauth.token(form, request.headers.get("Authorization"))
            return web.json_response(answer, status=status, headers={"Cache-Control": "no-store"})
        if request.path == REVOKE_PATH and request.method == "POST":
            token = request.query.get("token") or form.get("token", "")
            status, answer = oauth.revoke_token(token)
            return web.json_response(answer, status=status)
        return web.Response(status=405, text="Method Not Allowed")

    async def _serve_batch(
        self, content_type: str, body: bytes, authorization: str | None = None
    ) -> web.Response:
        try:
            inner = parse_batch(content_type, body)
        except BatchFormatError as exc:
            return _json_response(ApiResponse(*envelopes.bad_request(str(exc))))
        if authorization is not None:
            # The outer request's headers apply to every part that does not set its own.
            for part in inner:
                part.headers.setdefault("authorization", authorization)
        self.state.accounting.batch(len(inner))
        if len(inner) > MAX_PARTS:
            message = f"Inner request count exceeds the limit. Received: {len(inner)}, Limit: 100"
            return _json_response(ApiResponse(*envelopes.bad_request(message)))
        results = await self._run_parts(inner)
        parts = [
            (r.content_id, res.status, res.body, res.headers)
            for r, res in zip(inner, results, strict=True)
        ]
        content, payload = build_batch_response(parts)
        return web.Response(status=200, body=payload, headers={"Content-Type": content})

    async def _run_parts(self, inner: list[InnerRequest]) -> list[ApiResponse]:
        """Admit every part first (they are concurrent on Google's side), then serve them."""
        state = self.state
        arrival = time.time()
        admitted: list[ApiResponse | tuple[str, str, dict[str, str], Any, ApiRequest]] = []
        for part in inner:
            req = ApiRequest(part.method, part.path, _query(part.query), part.body, part.headers)
            resolved = state.resolve(req)
            if isinstance(resolved, ApiResponse):
                admitted.append(resolved)
                continue
            method_id, handler_name, params, box = resolved
            refused = state.admit(box.email_address, method_id, arrival)
            admitted.append(refused or (box.email_address, handler_name, params, box, req))

        async def serve(
            item: ApiResponse | tuple[str, str, dict[str, str], Any, ApiRequest],
        ) -> ApiResponse:
            if isinstance(item, ApiResponse):
                return item
            user, handler_name, params, box, req = item
            try:
                latency = state.faults.draw_latency()
                if latency:
                    await asyncio.sleep(latency)
                return state.run(handler_name, box, req, params)
            finally:
                state.quota.release(user)

        results = list(await asyncio.gather(*(serve(item) for item in admitted)))
        for result in results:
            state.accounting.status(result.status)
        return results


def _query(query: str) -> dict[str, list[str]]:
    return form_query(query.encode()) if query else {}


def _snapshot_json(snapshot: AccountingSnapshot) -> dict[str, Any]:
    return {
        "requests": snapshot.requests,
        "units": snapshot.units,
        "units_by_user": snapshot.units_by_user,
        "calls_by_method": snapshot.calls_by_method,
        "statuses": {str(k): v for k, v in snapshot.statuses.items()},
        "throttled": snapshot.throttled,
        "early_requests": snapshot.early_requests,
        "batches": snapshot.batches,
        "batch_parts": snapshot.batch_parts,
    }
