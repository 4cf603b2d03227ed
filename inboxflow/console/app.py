"""The console's ASGI app: a static page, a stream of snapshots, and two operator actions.

``build_app`` returns a Starlette app. One background task takes a status snapshot every tick
(``inboxflow.status.StatusCollector``) and every open page receives it as a server-sent event
on ``/events``; the page draws the topic and group graph from ``/api/catalogue``. The actions
reuse the operator tools: ``POST /api/dlq/{agent}/redrive`` calls ``ops.dlq.redrive`` (a dry
run first, the page asks for confirmation, then the real one) and ``POST
/api/accounts/{user}/pause|resume`` calls ``db.accounts.set_state``, as ``inboxflow accounts``
does.

There is no authentication: bind to loopback (the default) or put it behind a proxy that
authenticates. Against drive-by requests from other sites, every POST must carry the token the
page was served with (``X-Inboxflow-Token``) and, when the browser sends one, an ``Origin`` of
this server; ``Host`` must be an allowed name, so a rebound DNS name cannot reach it either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

import psycopg
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from db.accounts import AccountNotFoundError, AccountState, set_state
from inboxflow.settings import Settings
from inboxflow.status import StatusCollector
from inboxflow.wiring import gmail_client_from, kafka_from
from ops.dlq import redrive
from ops.status import Snapshot
from schemas.errors import InboxflowError, safe_error_text
from streams.stages.gmail.watch import stop_watch

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Inboxflow-Token"  # noqa: S105 - a header name, not a secret
TOKEN_PLACEHOLDER = "__INBOXFLOW_TOKEN__"  # noqa: S105 - replaced per start
DEFAULT_TICK_SECONDS = 1.5
REDRIVE_RATE = 50.0
"""Records per second a redrive from the page sends (``dlq redrive --rate``'s default)."""
JOBS_EVERY_SECONDS = 5.0
"""A job count scans the jobs table: the console counts at most this often."""
_STATIC = files("inboxflow.console") / "static"


@dataclass
class _Latest:
    """The newest snapshot, as the JSON every page receives, and a signal when it changes."""

    data: str | None = None
    version: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def publish(self, snapshot: Snapshot) -> None:
        async with self.changed:
            self.data = json.dumps(snapshot.to_dict())
            self.version += 1
            self.changed.notify_all()

    async def after(self, version: int) -> tuple[int, str]:
        async with self.changed:
            await self.changed.wait_for(lambda: self.version > version and self.data is not None)
            assert self.data is not None  # noqa: S101 - checked by the predicate
            return self.version, self.data


def allowed_hosts(host: str) -> list[str]:
    """Return the Host names the console answers: loopback names, plus ``host`` if specific.

    Bound to every interface (``0.0.0.0``, ``::``) any name is accepted: such a console must sit
    behind a proxy that authenticates.
    """
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - the operator asked for every interface
        return ["*"]
    return sorted({"127.0.0.1", "localhost", "[::1]", host})


def build_app(
    settings: Settings,
    *,
    metrics_urls: Sequence[str],
    host: str = "127.0.0.1",
    tick_seconds: float = DEFAULT_TICK_SECONDS,
    token: str | None = None,
) -> Starlette:
    """Return the console app for the deployment ``settings`` describe.

    Args:
        settings: the deployment (Kafka, Postgres, namespace, ladders).
        metrics_urls: the workers' Prometheus endpoints (absent workers are shown down).
        host: the address it is bound to (decides which Host headers are accepted).
        tick_seconds: seconds between snapshots pushed to the pages.
        token: the anti-forgery token POSTs must carry; random per start when None.
    """
    console = _Console(
        settings, list(metrics_urls), tick_seconds, token or secrets.token_urlsafe(32)
    )
    routes = [
        Route("/", console.index),
        Route("/events", console.events),
        Route("/api/catalogue", console.catalogue),
        Route("/api/snapshot", console.snapshot),
        Route("/api/dlq/{agent}/redrive", console.redrive, methods=["POST"]),
        Route("/api/accounts/{user}/{action}", console.account, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("inboxflow.console", "static")]), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(host))]
    return Starlette(routes=routes, middleware=middleware, lifespan=console.lifespan)


class _Console:
    """The app's state: settings, the snapshot loop and the locks that keep actions apart."""

    def __init__(
        self, settings: Settings, metrics_urls: list[str], tick_seconds: float, token: str
    ) -> None:
        self.settings = settings
        self.metrics_urls = metrics_urls
        self.tick_seconds = tick_seconds
        self.token = token
        self.latest = _Latest()
        self.collector = StatusCollector(
            settings, metrics_urls=metrics_urls, jobs_every=JOBS_EVERY_SECONDS
        )
        self.redrives: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with self.collector:
            task = asyncio.create_task(self._tick(), name="console-snapshots")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.latest.publish(await self.collector.collect())
            except Exception:  # a bug must not stop the page's updates; the next tick retries
                log.exception("console snapshot failed")
            await asyncio.sleep(max(0.1, self.tick_seconds - (loop.time() - started)))

    # --- pages and data ------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        page = (_STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(
            page.replace(TOKEN_PLACEHOLDER, self.token),
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )

    async def catalogue(self, request: Request) -> Response:
        return JSONResponse(self.collector.catalogue.to_dict())

    async def snapshot(self, request: Request) -> Response:
        _version, data = await self.latest.after(0)
        return Response(data, media_type="application/json")

    async def events(self, request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            version = 0
            yield f"retry: {int(self.tick_seconds * 1000)}\n\n"
            while True:
                version, data = await self.latest.after(version)
                yield f"event: snapshot\ndata: {data}\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # --- actions -------------------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        """Return a 403 unless the request carries the page's token and comes from this origin."""
        sent = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.token.encode()):
            return JSONResponse({"error": f"missing or wrong {TOKEN_HEADER}"}, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            return JSONResponse({"error": "cross-origin request refused"}, status_code=403)
        return None

    async def redrive(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        body = await _json_body(request)
        try:
            group = self.collector.catalogue.group(request.path_params["agent"])
        except KeyError as exc:
            return JSONResponse({"error": str(exc.args[0])}, status_code=404)
        execute = body.get("execute") is True
        lock = self.redrives.setdefault(group.group_id, asyncio.Lock())
        if lock.locked():
            return JSONResponse(
                {"error": f"a redrive of {group.dlq.name} is already running"}, status_code=409
            )
        async with lock:
            try:
                report = await redrive(
                    kafka_from(self.settings),
                    group,
                    dry_run=not execute,
                    rate_per_second=REDRIVE_RATE,
                    replay_id=f"console-{secrets.token_hex(6)}" if execute else None,
                )
            except InboxflowError as exc:
                return JSONResponse({"error": str(exc)}, status_code=502)
        log.info(
            "console redrive %s group=%s moved=%s",
            "done" if execute else "planned",
            group.group_id,
            report.moved,
        )
        return JSONResponse(report.to_dict())

    async def account(self, request: Request) -> Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        user, action = request.path_params["user"], request.path_params["action"]
        states = {"pause": AccountState.PAUSED, "resume": AccountState.ACTIVE}
        if action not in states:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=404)
        conninfo = self.settings.database_url.get_secret_value()
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=5) as conn:
                account = await set_state(conn, user, states[action])
        except AccountNotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except psycopg.Error as exc:
            return JSONResponse({"error": f"postgres: {safe_error_text(exc)}"}, status_code=502)
        log.info("console account %s user=%s state=%s", action, account.user_id, account.state)
        warning = await self._stop_watch(account.user_id) if action == "pause" else None
        return JSONResponse({"account": account.to_json(), "warning": warning})

    async def _stop_watch(self, user: str) -> str | None:
        """Stop the paused account's Gmail push (when push is configured); best effort."""
        if self.settings.gmail_pubsub_topic is None:
            return None
        client = gmail_client_from(self.settings)
        try:
            await stop_watch(client, user)
        except InboxflowError as exc:
            return f"Gmail watch of {user} not stopped: {exc}"
        finally:
            client.close()
        return None


_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
