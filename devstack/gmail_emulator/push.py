"""Gmail push as Google delivers it: ``users.watch`` registrations and Pub/Sub push deliveries.

A watched mailbox's changes become Pub/Sub push envelopes POSTed to one configured endpoint,
each with an OIDC ID token signed by a throwaway RSA key (``OidcSigner``); the emulator serves
that key's certificate the way Google serves its own, so a receiver verifies these tokens with
the same code it uses for Google's. Knobs (``PushConfig``) model what Gmail does to
notifications: at most one per user per ``min_interval_seconds`` (later changes are folded into
the next one), a seeded share silently lost, redelivery of unacknowledged pushes.

Deliveries run as tasks on the emulator's event loop, never inside an API request. Must not import
``streams``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from devstack.gmail_emulator.mailbox import HistoryRecord

log = logging.getLogger(__name__)

GOOGLE_ISSUER = "https://accounts.google.com"
TOPIC_NAME = re.compile(r"^projects/[a-z0-9][a-z0-9.:-]*/topics/[A-Za-z][\w.~+%-]{2,254}$")
WATCH_LIFETIME = timedelta(days=7)
CERTS_PATH = "/oauth2/v1/certs"
# Pub/Sub takes these push answers as an acknowledgement; anything else is redelivered.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})

LabelFilter = Literal["include", "exclude"]


@dataclass(frozen=True)
class PushConfig:
    """Where and how the emulator delivers push notifications.

    Attributes:
        endpoint: URL of the push subscription's endpoint; ``None`` = watches are accepted but
            nothing is delivered.
        audience: the ``aud`` claim of the OIDC token; ``None`` = the endpoint URL (what Pub/Sub
            uses when a subscription names no audience).
        service_account: the ``email`` claim: the service account the subscription pushes as.
        subscription: the ``subscription`` field of each envelope.
        drop_rate: share of notifications silently never sent (Gmail may drop some); seeded.
        min_interval_seconds: at most one notification per user per this many seconds; changes
            in between are carried by the next one (the newest ``historyId``).
        timeout_seconds: how long one POST may take before it counts as failed.
        max_attempts: POSTs per notification until one is acknowledged (Pub/Sub redelivers).
        retry_seconds: wait before the first redelivery; doubles for each further one.
        token_lifetime_seconds: ``exp - iat`` of the OIDC token.
        seed: seed of the drop draws.
    """

    endpoint: str | None = None
    audience: str | None = None
    service_account: str = "gmail-push@inboxflow-emulator.iam.gserviceaccount.com"
    subscription: str = "projects/inboxflow-emulator/subscriptions/gmail-push"
    drop_rate: float = 0.0
    min_interval_seconds: float = 1.0
    timeout_seconds: float = 5.0
    max_attempts: int = 3
    retry_seconds: float = 0.5
    token_lifetime_seconds: int = 3600
    seed: int = 0

    @property
    def token_audience(self) -> str:
        """The ``aud`` claim the pushes carry."""
        return self.audience or self.endpoint or ""


@dataclass(frozen=True)
class Watch:
    """One mailbox's ``users.watch`` registration."""

    topic_name: str
    label_ids: tuple[str, ...] = ()
    label_filter: LabelFilter = "include"
    expiration_ms: int = 0

    def covers(self, record: HistoryRecord, now_ms: int) -> bool:
        """Whether a change is announced: the watch is live and its label filter lets it through.

        A change relates to a label when the message carries it or the change added or removed it.
        """
        if now_ms >= self.expiration_ms:
            return False
        if not self.label_ids:
            return True
        related = bool(set(self.label_ids) & {*record.message_labels, *record.labels})
        return related if self.label_filter == "include" else not related


class OidcSigner:
    """Signs Google-style OIDC ID tokens with a fresh RSA key and publishes its certificate.

    Args:
        key_id: the ``kid`` of the key; default: derived from the public key.
        issuer: the ``iss`` claim.
    """

    def __init__(self, *, key_id: str | None = None, issuer: str = GOOGLE_ISSUER) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = key_id or hashlib.sha1(public, usedforsecurity=False).hexdigest()
        self.issuer = issuer
        now = datetime.now(UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inboxflow-emulator-oidc")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        self.certificate_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._signer = crypt.RSASigner.from_string(pem, key_id=self.key_id)  # type: ignore[no-untyped-call]

    def certs(self) -> dict[str, str]:
        """The public certificates as Google's v1 certs endpoint serves them: ``kid`` -> PEM."""
        return {self.key_id: self.certificate_pem}

    def token(
        self,
        *,
        audience: str,
        email: str,
        issued_at: float | None = None,
        lifetime_seconds: int = 3600,
        **claims: Any,
    ) -> str:
        """Return a signed ID token; ``claims`` add to or override the standard ones."""
        iat = int(time.time() if issued_at is None else issued_at)
        # Google puts the service account's numeric unique id in both.
        unique_id = str(
            int(hashlib.sha1(email.encode(), usedforsecurity=False).hexdigest()[:16], 16)
        )
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "azp": unique_id,
            "sub": unique_id,
            "email": email,
            "email_verified": True,
            "iat": iat,
            "exp": iat + lifetime_seconds,
            **claims,
        }
        return jwt.encode(self._signer, payload).decode()  # type: ignore[no-untyped-call,no-any-return]


def push_envelope(
    email_address: str,
    history_id: int,
    *,
    message_id: str,
    subscription: str,
    published: datetime,
) -> dict[str, Any]:
    """Return the JSON body Pub/Sub POSTs for one Gmail notification (pure)."""
    data = json.dumps({"emailAddress": email_address, "historyId": history_id}).encode()
    moment = published.astimezone(UTC)
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": {},
            "messageId": message_id,
            "publishTime": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}Z",
        },
        "subscription": subscription,
    }


@dataclass
class PushStats:
    """What the notifier did; ``GmailEmulator.push_stats`` returns a copy.

    Attributes:
        changes: mailbox changes a live watch covered.
        notifications: notifications published (one per user per interval at most).
        coalesced: changes folded into a notification already due.
        dropped: notifications lost on purpose (``drop_rate``).
        attempts: POSTs made (redeliveries included).
        acknowledged: notifications whose POST was acknowledged.
        undelivered: notifications given up after ``max_attempts``.
        statuses: HTTP status per POST (0: no answer).
        history_ids: per user, the ``historyId`` of each acknowledged notification, in order.
    """

    changes: int = 0
    notifications: int = 0
    coalesced: int = 0
    dropped: int = 0
    attempts: int = 0
    acknowledged: int = 0
    undelivered: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    history_ids: dict[str, list[int]] = field(default_factory=dict)

    def copy(self) -> PushStats:
        """A deep enough copy to read while the notifier goes on."""
        return replace(
            self,
            statuses=Counter(self.statuses),
            history_ids={user: list(ids) for user, ids in self.history_ids.items()},
        )


@dataclass
class _UserPush:
    latest: int = 0  # newest history id not yet announced
    due: asyncio.TimerHandle | None = None
    last_sent: float = float("-inf")  # loop time of the last notification


class PushNotifier:
    """Turns covered mailbox changes into push deliveries on one event loop.

    ``changed`` may be called from any thread (mailboxes change under the emulator's lock, from API
    handlers or from test helpers); everything else runs on the bound loop.
    """

    def __init__(self, config: PushConfig | None = None, signer: OidcSigner | None = None) -> None:
        self.config = config or PushConfig()
        self._signer = signer
        self._signer_lock = threading.Lock()
        self._rng = random.Random(self.config.seed)  # noqa: S311 - reproducible drops
        self._stats = PushStats()
        self._stats_lock = threading.Lock()
        self._users: dict[str, _UserPush] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_message_id = random.Random(f"messages:{self.config.seed}").randrange(  # noqa: S311
            10**15, 10**16
        )

    @property
    def signer(self) -> OidcSigner:
        """The signing key, made on first use (an RSA key takes a while to generate)."""
        with self._signer_lock:
            if self._signer is None:
                self._signer = OidcSigner()
            return self._signer

    # -- lifecycle -----------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` from now on (the emulator's serving loop)."""
        self._loop = loop

    async def close(self) -> None:
        """Cancel pending notifications and deliveries; close the HTTP session."""
        self._loop = None
        for state in self._users.values():
            if state.due is not None:
                state.due.cancel()
                state.due = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def configure(self, config: PushConfig) -> None:
        """Replace the knobs; the key, the per-user timing and the counters stay."""
        self.config = config
        self._rng = random.Random(config.seed)  # noqa: S311 - reproducible drops

    @property
    def stats(self) -> PushStats:
        """A copy of the counters."""
        with self._stats_lock:
            return self._stats.copy()

    # -- notifications -------------------------------------------------------------------------

    def changed(self, user: str, history_id: int) -> None:
        """Note a covered change of ``user``'s mailbox; thread-safe and never blocks."""
        loop = self._loop
        if loop is None or self.config.endpoint is None:
            return
        with self._stats_lock:
            self._stats.changes += 1
        try:
            loop.call_soon_threadsafe(self._schedule, user, history_id)
        except RuntimeError:  # the loop closed under us: the emulator is stopping
            log.debug("push skipped, emulator stopping user=%s", user)

    def _schedule(self, user: str, history_id: int) -> None:
        loop = self._loop
        if loop is None:
            return
        state = self._users.setdefault(user, _UserPush())
        state.latest = max(state.latest, history_id)
        if state.due is not None:
            with self._stats_lock:
                self._stats.coalesced += 1
            return
        wait = max(0.0, state.last_sent + self.config.min_interval_seconds - loop.time())
        state.due = loop.call_later(wait, self._publish, user)

    def _publish(self, user: str) -> None:
        loop = self._loop
        state = self._users[user]
        state.due = None
        if loop is None:
            return
        state.last_sent = loop.time()
        history_id = state.latest
        if self.config.drop_rate > 0 and self._rng.random() < self.config.drop_rate:
            with self._stats_lock:
                self._stats.dropped += 1
            log.info("push dropped on purpose user=%s history_id=%s", user, history_id)
            return
        with self._stats_lock:
            self._stats.notifications += 1
        self._next_message_id += 1
        task = loop.create_task(self._deliver(user, history_id, str(self._next_message_id)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, user: str, history_id: int, message_id: str) -> None:
        config = self.config
        if config.endpoint is None:
            return
        body = json.dumps(
            push_envelope(
                user,
                history_id,
                message_id=message_id,
                subscription=config.subscription,
                published=datetime.now(UTC),
            )
        ).encode()
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
        for attempt in range(1, config.max_attempts + 1):
            token = self.signer.token(
                audience=config.token_audience,
                email=config.service_account,
                lifetime_seconds=config.token_lifetime_seconds,
            )
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            status = 0
            try:
                async with self._session.post(
                    config.endpoint, data=body, headers=headers, timeout=timeout
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "push failed user=%s message_id=%s attempt=%d error=%r",
                    user,
                    message_id,
                    attempt,
                    exc,
                )
            with self._stats_lock:
                self._stats.attempts += 1
                self._stats.statuses[status] += 1
                if status in ACK_STATUSES:
                    self._stats.acknowledged += 1
                    self._stats.history_ids.setdefault(user, []).append(history_id)
            if status in ACK_STATUSES:
                log.debug("push acknowledged user=%s message_id=%s", user, message_id)
                return
            if status:
                log.warning(
                    "push refused user=%s message_id=%s attempt=%d status=%d",
                    user,
                    message_id,
                    attempt,
                    status,
                )
            if attempt < config.max_attempts:
                await asyncio.sleep(config.retry_seconds * 2 ** (attempt - 1))
        with self._stats_lock:
            self._stats.undelivered += 1
        log.warning("push given up user=%s message_id=%s", user, message_id)
