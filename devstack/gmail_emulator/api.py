"""Gmail API method handlers and the per-request pipeline (faults, quota, accounting).

``EmulatorState.handle`` serves one request (or one batch part) the way Gmail would, without
any HTTP
framing: ``server.py`` adds that. Handlers run under one lock and never await.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from devstack.gmail_emulator import envelopes, views
from devstack.gmail_emulator.accounting import Accounting
from devstack.gmail_emulator.envelopes import ErrorResponse
from devstack.gmail_emulator.faults import FaultConfig, FaultInjector
from devstack.gmail_emulator.mailbox import (
    HistoryExpiredError,
    HistoryRecord,
    ListQuery,
    Mailbox,
    StoredMessage,
    decode_page_token,
    encode_page_token,
)
from devstack.gmail_emulator.oauth import AuthFailure, OAuthConfig, OAuthServer
from devstack.gmail_emulator.push import (
    TOPIC_NAME,
    WATCH_LIFETIME,
    PushConfig,
    PushNotifier,
    Watch,
)
from devstack.gmail_emulator.quota import QuotaConfig, QuotaModel, Throttle

Json = dict[str, Any]
Query = dict[str, list[str]]


@dataclass(frozen=True)
class ApiRequest:
    """One Gmail REST call, from a socket or a batch part."""

    method: str
    path: str
    query: Query
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """First value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        """All values of a repeated query parameter."""
        return self.query.get(name, [])


@dataclass(frozen=True)
class ApiResponse:
    """Status, JSON body and extra headers."""

    status: int
    body: Json
    headers: dict[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    def __init__(self, response: ErrorResponse) -> None:
        super().__init__(response[1]["error"]["message"])
        self.response = response


Handler = Callable[["EmulatorState", Mailbox, ApiRequest, dict[str, str]], Json | ApiResponse]
_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = []


def _route(http_method: str, pattern: str, method_id: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        regex = re.compile("^/(?:upload/)?gmail/v1/users/(?P<user>[^/]+)" + pattern + "$")
        _ROUTES.append((http_method, regex, method_id, handler.__name__))
        return handler

    return register


def decode_b64(value: str) -> bytes:
    """Decode base64url or standard base64, padded or not."""
    padded = value + "=" * (-len(value) % 4)
    try:
        return base64.urlsafe_b64decode(padded.replace("+", "-").replace("/", "_"))
    except (binascii.Error, ValueError) as exc:
        raise _ApiError(envelopes.bad_request("Invalid value for ByteString")) from exc


class EmulatorState:
    """Mailboxes, quota, faults and accounting of one emulator; safe to call from any thread."""

    def __init__(
        self,
        quota: QuotaConfig | None = None,
        faults: FaultConfig | None = None,
        history_retention: int = 100_000,
        *,
        push: PushConfig | None = None,
        oauth: OAuthConfig | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.default_user: str | None = None
        self.history_retention = history_retention
        self.quota = QuotaModel(quota or QuotaConfig())
        self.faults = FaultInjector(faults or FaultConfig())
        self.accounting = Accounting()
        self.watches: dict[str, Watch] = {}  # email address -> users.watch registration
        self.push = PushNotifier(push)
        self.oauth = OAuthServer(oauth, has_mailbox=lambda user: self.mailbox_for(user) is not None)

    # -- users ---------------------------------------------------------------------------------

    def add_user(self, email_address: str, seed: int = 0) -> Mailbox:
        """Create (or return) the mailbox of ``email_address``; the first user is ``me``."""
        with self.lock:
            box = self.mailboxes.get(email_address)
            if box is None:
                box = Mailbox(email_address, seed=seed, history_retention=self.history_retention)
                box.on_change = self._mailbox_changed
                self.mailboxes[email_address] = box
                self.default_user = self.default_user or email_address
            return box

    def mailbox_for(self, user_id: str) -> Mailbox | None:
        """Resolve a path ``userId`` (``me`` or an address)."""
        with self.lock:
            if user_id == "me":
                return self.mailboxes.get(self.default_user or "")
            return self.mailboxes.get(user_id)

    def _mailbox_changed(self, box: Mailbox, record: HistoryRecord) -> None:
        """Announce a change to the push endpoint when a live watch covers it (under the lock)."""
        watch = self.watches.get(box.email_address)
        if watch is not None and watch.covers(record, int(time.time() * 1000)):
            self.push.changed(box.email_address, record.id)

    # -- the per-request pipeline ------------------------------------------------------------

    def resolve(self, req: ApiRequest) -> tuple[str, str, dict[str, str], Mailbox] | ApiResponse:
        """Find the route and mailbox, or the error response Gmail would give."""
        for http_method, regex, method_id, handler_name in _ROUTES:
            match = regex.match(unquote(req.path))
            if match and req.method == http_method:
                user = match["user"]
                if self.oauth.require_auth:
                    verdict = self.oauth.authenticate(
                        req.headers.get("authorization"), user, method_id, req.query
                    )
                    if isinstance(verdict, AuthFailure):
                        return ApiResponse(verdict.status, verdict.body, verdict.headers)
                    user = verdict.user  # "me" is the token's mailbox
                box = self.mailbox_for(user)
                if box is None:
                    return ApiResponse(*envelopes.failed_precondition())
                return method_id, handler_name, match.groupdict(), box
        return ApiResponse(*envelopes.error(404, f"Not Found: {req.path}", "notFound"))

    def admit(self, user: str, method_id: str, wall: float | None = None) -> ApiResponse | None:
        """Apply faults and quota to one call; ``None`` means admitted and charged.

        Batch parts pass the batch's arrival time as ``wall`` so they are charged as one arrival.
        """
        now = time.monotonic()
        wall = time.time() if wall is None else wall
        self.accounting.request(self.quota.early(user, wall))
        fault = self.faults.draw_fault()
        if fault == "429":
            retry_at = wall + self.faults.config.throttle_seconds
            self.quota.block(user, retry_at, wall)
            self.accounting.throttle("injected")
            return self._throttle_response(envelopes.too_many_requests(retry_at), retry_at, wall)
        if fault == "500":
            return ApiResponse(*envelopes.backend_error())
        if fault == "503":
            return ApiResponse(*envelopes.unavailable())
        throttle = self.quota.admit(user, method_id, now, wall)
        if throttle is not None:
            self.accounting.throttle(throttle.kind)
            return self._throttled(throttle, wall)
        self.accounting.charge(wall, user, method_id, self.quota.cost(method_id))
        return None

    def _throttled(self, throttle: Throttle, wall: float) -> ApiResponse:
        if throttle.kind == "concurrency":
            return ApiResponse(*envelopes.too_many_concurrent())
        if throttle.kind == "daily":
            return ApiResponse(*envelopes.daily_limit_exceeded())
        retry_at = throttle.retry_at or wall
        if throttle.kind == "project":
            return self._throttle_response(envelopes.project_rate_limited(retry_at), retry_at, wall)
        status = self.quota.config.user_throttle_status
        return self._throttle_response(
            envelopes.user_rate_limited(retry_at, status), retry_at, wall
        )

    def _throttle_response(self, error: ErrorResponse, retry_at: float, wall: float) -> ApiResponse:
        headers = {}
        if self.quota.config.retry_after_header:
            headers["Retry-After"] = str(max(1, int(retry_at - wall + 0.999)))
        return ApiResponse(error[0], error[1], headers)

    def run(
        self, handler_name: str, box: Mailbox, req: ApiRequest, params: dict[str, str]
    ) -> ApiResponse:
        """Run an admitted call's handler."""
        handler: Handler = globals()[handler_name]
        try:
            with self.lock:
                result = handler(self, box, req, params)
        except _ApiError as exc:
            return ApiResponse(*exc.response)
        return result if isinstance(result, ApiResponse) else ApiResponse(200, result)

    async def handle(self, req: ApiRequest) -> ApiResponse:
        """Serve one call end to end (faults, quota, latency, handler)."""
        resolved = self.resolve(req)
        if isinstance(resolved, ApiResponse):
            self.accounting.status(resolved.status)
            return resolved
        method_id, handler_name, params, box = resolved
        refused = self.admit(box.email_address, method_id)
        if refused is not None:
            self.accounting.status(refused.status)
            return refused
        try:
            latency = self.faults.draw_latency()
            if latency:
                await asyncio.sleep(latency)
            response = self.run(handler_name, box, req, params)
        finally:
            self.quota.release(box.email_address)
        self.accounting.status(response.status)
        return response


# -- handlers ---------------------------------------------------------------------------------


def _message(box: Mailbox, message_id: str) -> StoredMessage:
    msg = box.messages.get(message_id)
    if msg is None:
        raise _ApiError(envelopes.not_found())
    return msg


def _int_arg(req: ApiRequest, name: str, default: int, maximum: int) -> int:
    try:
        value = int(req.arg(name) or default)
    except ValueError as exc:
        raise _ApiError(envelopes.bad_request(f"Invalid value for {name}")) from exc
    return max(1, min(value, maximum))


@_route("GET", "/profile", "users.getProfile")
def get_profile(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.getProfile."""
    return {
        "emailAddress": box.email_address,
        "messagesTotal": len(box.messages),
        "threadsTotal": box.threads_total(),
        "historyId": str(box.history_id),
    }


@_route("GET", "/labels", "users.labels.list")
def list_labels(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.labels.list."""
    from devstack.gmail_emulator.mailbox import SYSTEM_LABELS

    labels = [{"id": x, "name": x, "type": "system"} for x in SYSTEM_LABELS]
    labels += [{"id": i, "name": n, "type": "user"} for i, n in box.user_labels.items()]
    return {"labels": labels}


def _first_after(newest_first: list[StoredMessage], after: tuple[int, str]) -> int:
    """Index of the first message older than ``after`` in a newest-first listing (bisect)."""
    low, high = 0, len(newest_first)
    while low < high:
        middle = (low + high) // 2
        message = newest_first[middle]
        if (message.internal_date, message.id) < after:
            high = middle
        else:
            low = middle + 1
    return low


@_route("GET", "/messages", "users.messages.list")
def list_messages(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.messages.list: newest first, ``maxResults`` up to 500, opaque ``pageToken``."""
    size = _int_arg(req, "maxResults", 100, 500)
    include = (req.arg("includeSpamTrash") or "false").lower() == "true"
    found = box.list(ListQuery(req.args("labelIds"), include, req.arg("q") or ""))
    token = req.arg("pageToken")
    start = 0
    if token:
        try:
            after = decode_page_token(token)
        except (ValueError, binascii.Error) as exc:
            raise _ApiError(envelopes.bad_request("Invalid pageToken")) from exc
        start = _first_after(found, after)
    page = found[start : start + size]  # a page, not a copy of the rest of the mailbox
    body: Json = {"resultSizeEstimate": len(found) - start}
    if page:
        body["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
    if len(found) - start > size:
        body["nextPageToken"] = encode_page_token(page[-1])
    return body


def _format(req: ApiRequest, allowed: tuple[str, ...]) -> str:
    fmt = (req.arg("format") or "full").lower()
    if fmt not in allowed:
        raise _ApiError(envelopes.bad_request(f"Invalid value at 'format' ({fmt})"))
    return fmt


@_route("GET", "/messages/(?P<id>[^/]+)", "users.messages.get")
def get_message(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.messages.get in any format; the vanish fault deletes the message first."""
    fmt = _format(req, ("minimal", "metadata", "full", "raw"))
    if p["id"] in box.messages and state.faults.draw_vanish():
        box.delete(p["id"])
    msg = _message(box, p["id"])
    return views.message_resource(msg, fmt, req.args("metadataHeaders"))


@_route(
    "GET", "/messages/(?P<id>[^/]+)/attachments/(?P<aid>[^/]+)", "users.messages.attachments.get"
)
def get_attachment(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.messages.attachments.get."""
    msg = _message(box, p["id"])
    part_id = views.attachment_ids(msg).get(p["aid"])
    data = None if part_id is None else views.attachment_body(msg, part_id)
    if data is None:
        raise _ApiError(envelopes.not_found())
    return {"attachmentId": p["aid"], "size": len(data), "data": views.b64url(data)}


@_route("GET", "/threads/(?P<id>[^/]+)", "users.threads.get")
def get_thread(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.threads.get (``full``, ``metadata``, ``minimal``; Gmail has no ``raw`` here)."""
    fmt = _format(req, ("minimal", "metadata", "full"))
    messages = box.thread(p["id"])
    if not messages:
        raise _ApiError(envelopes.not_found())
    headers = req.args("metadataHeaders")
    return {
        "id": p["id"],
        "historyId": str(max(m.history_id for m in messages)),
        "messages": [views.message_resource(m, fmt, headers) for m in messages],
    }


@_route("GET", "/threads", "users.threads.list")
def list_threads(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.threads.list: threads by their newest matching message."""
    size = _int_arg(req, "maxResults", 100, 500)
    include = (req.arg("includeSpamTrash") or "false").lower() == "true"
    seen: dict[str, StoredMessage] = {}
    for msg in box.list(ListQuery(req.args("labelIds"), include, req.arg("q") or "")):
        seen.setdefault(msg.thread_id, msg)
    threads = list(seen.values())
    start = int(req.arg("pageToken") or 0)
    page = threads[start : start + size]
    body: Json = {"resultSizeEstimate": len(threads)}
    if page:
        body["threads"] = [
            {"id": m.thread_id, "snippet": "", "historyId": str(m.history_id)} for m in page
        ]
    if start + size < len(threads):
        body["nextPageToken"] = str(start + size)
    return body


def _history_entry(record: HistoryRecord) -> Json:
    ref = {"id": record.message_id, "threadId": record.thread_id}
    full = {**ref, "labelIds": list(record.message_labels)}
    entry: Json = {"id": str(record.id), "messages": [ref]}
    if record.type == "messageAdded":
        entry["messagesAdded"] = [{"message": full}]
    elif record.type == "messageDeleted":
        entry["messagesDeleted"] = [{"message": ref}]
    else:
        key = "labelsAdded" if record.type == "labelAdded" else "labelsRemoved"
        entry[key] = [{"message": full, "labelIds": list(record.labels)}]
    return entry


@_route("GET", "/history", "users.history.list")
def list_history(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.history.list: 404 once ``startHistoryId`` is older than the retained window."""
    start = req.arg("startHistoryId")
    if not start or not start.isdigit():
        raise _ApiError(envelopes.bad_request("Invalid startHistoryId", "invalidArgument"))
    try:
        records = box.history_since(int(start), req.args("historyTypes") or None)
    except HistoryExpiredError as exc:
        raise _ApiError(envelopes.not_found()) from exc
    label = req.arg("labelId")
    if label:
        records = [r for r in records if label in r.message_labels or label in r.labels]
    size = _int_arg(req, "maxResults", 100, 500)
    offset = int(req.arg("pageToken") or 0)
    page = records[offset : offset + size]
    body: Json = {"historyId": str(box.history_id)}
    if page:
        body["history"] = [_history_entry(r) for r in page]
    if offset + size < len(records):
        body["nextPageToken"] = str(offset + size)
    return body


def _upload_raw(req: ApiRequest) -> tuple[bytes, Json]:
    upload = req.arg("uploadType")
    if upload == "media":
        return req.body, {}
    if upload == "multipart":
        boundary = re.search(r'boundary="?([^";]+)"?', req.headers.get("content-type", ""))
        if boundary is None:
            raise _ApiError(envelopes.bad_request("multipart upload without boundary"))
        chunks = req.body.split(b"--" + boundary.group(1).encode())
        meta_part, media_part = chunks[1], chunks[2]
        meta_json = re.split(rb"\r?\n\r?\n", meta_part, maxsplit=1)[1].strip()
        media = re.split(rb"\r?\n\r?\n", media_part, maxsplit=1)[1]
        media = media[:-2] if media.endswith(b"\r\n") else media.removesuffix(b"\n")
        return media, json.loads(meta_json or b"{}")
    meta = json.loads(req.body or b"{}")
    if "raw" not in meta:
        raise _ApiError(envelopes.bad_request("'raw' RFC822 payload message string is required"))
    return decode_b64(str(meta["raw"])), meta


def _store(box: Mailbox, req: ApiRequest, default_source: str) -> Json:
    raw, meta = _upload_raw(req)
    source = req.arg("internalDateSource") or default_source
    msg = box.add(
        raw,
        meta.get("labelIds") or [],
        date_source="dateHeader" if source == "dateHeader" else "receivedTime",
    )
    return {"id": msg.id, "threadId": msg.thread_id, "labelIds": list(msg.label_ids)}


@_route("POST", "/messages", "users.messages.insert")
def insert_message(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.messages.insert (``raw``; internal date from receive time unless told)."""
    return _store(box, req, "receivedTime")


@_route("POST", "/messages/import", "users.messages.import")
def import_message(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.messages.import (``raw``; internal date from the Date header unless told)."""
    return _store(box, req, "dateHeader")


def _json_body(req: ApiRequest) -> Json:
    try:
        body = json.loads(req.body or b"{}")
    except ValueError as exc:
        raise _ApiError(envelopes.bad_request("Invalid JSON payload received.")) from exc
    if not isinstance(body, dict):
        raise _ApiError(envelopes.bad_request("Invalid JSON payload received."))
    return body


@_route("POST", "/watch", "users.watch")
def watch(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> Json:
    """users.watch: (re)register push notifications to a Pub/Sub topic for seven days."""
    body = _json_body(req)
    topic = body.get("topicName")
    if not isinstance(topic, str) or not TOPIC_NAME.match(topic):
        raise _ApiError(
            envelopes.bad_request("Invalid topicName does not match projects/SOME-PROJECT/topics/*")
        )
    label_ids = body.get("labelIds") or []
    if not isinstance(label_ids, list) or not all(isinstance(x, str) for x in label_ids):
        raise _ApiError(envelopes.bad_request("Invalid value at 'label_ids'"))
    # labelFilterAction is the deprecated spelling; labelFilterBehavior wins when both are set.
    behaviour = str(body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include")
    if behaviour.lower() not in ("include", "exclude"):
        raise _ApiError(
            envelopes.bad_request(f"Invalid value at 'label_filter_behavior' ({behaviour})")
        )
    expiration = int((time.time() + WATCH_LIFETIME.total_seconds()) * 1000)
    state.watches[box.email_address] = Watch(
        topic,
        tuple(box.label_id(x) for x in label_ids),
        "exclude" if behaviour.lower() == "exclude" else "include",
        expiration,
    )
    return {"historyId": str(box.history_id), "expiration": str(expiration)}


@_route("POST", "/stop", "users.stop")
def stop(state: EmulatorState, box: Mailbox, req: ApiRequest, p: dict[str, str]) -> ApiResponse:
    """users.stop: no more push notifications for this mailbox (204, also when none was set)."""
    state.watches.pop(box.email_address, None)
    return ApiResponse(204, {})


def form_query(body: bytes) -> Query:
    """Parameters of a ``x-http-method-override: GET`` POST (long URIs)."""
    return parse_qs(body.decode("utf-8"), keep_blank_values=True)
