"""The one failure vocabulary: what went wrong, how it is classified, where the record goes next.

Every package that handles a failure uses this module: the stage runtime, the retry relay, the
sinks and the operator tools. ``RetryClass`` values are written to dead-letter headers (their keys
are in ``schemas.headers``) and to ``jobs.last_error_class``: they are contract.

Each exception carries the retry class that decides what happens to the record that raised it::

    InboxflowError                  (PERMANENT unless a subclass says otherwise)
    ├── TransientError              TRANSIENT   network blips, 5xx, database restarts
    │   └── DependencyUnavailableError  TRANSIENT   circuit breaker open
    ├── RateLimitedError            RATE_LIMIT  429 / 403 rateLimitExceeded; retry_after set
    ├── QuotaExceededError          QUOTA       daily or per-minute quota used up; due at the reset
    ├── StageTimeoutError           TIMEOUT     a stage ran past its per-kind deadline
    └── PermanentError              PERMANENT   retrying cannot help
        ├── UndecodableRecordError  PERMANENT   bytes that no known schema reads
        ├── StaleHistoryError       PERMANENT   historyId too old; sync does a full resync
        ├── AccountRevokedError     PERMANENT   Gmail grant gone (invalid_grant); account revoked
        ├── CredentialsError        PERMANENT   stored credentials unusable (key missing, altered)
        └── MimeBombError           PERMANENT   MIME nested or split past the parser's limits

Each dependency is wrapped once, where it is called (the Gmail client, the embedding provider,
the sinks), into one of these classes. ``classify`` maps any exception to a ``Failure``: pure, and
an exception nobody expected is PERMANENT (a bug). ``decide`` turns a failure and the attempts so
far into the next stop on the group's retry ladder (``RetryTier``) or the dead-letter topic.
Pure throughout: no I/O, no clock (callers pass ``now``), no settings.

Error texts leave the process (dead-letter headers, ``jobs.last_error``, logs, HTTP answers) only
through ``safe_error_text``: many libraries quote their input in their messages (pydantic's
``input_value``, a parser's offending line, a SQL value in psycopg's primary message), and that
input is mail. Only messages inboxflow wrote, and those of a short allow-list of libraries that
describe connections rather than data, are kept; ``redact_secrets`` still runs over them.
"""

from __future__ import annotations

import json
import random
import re
import sys
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePath
from typing import TYPE_CHECKING, ClassVar, cast

if TYPE_CHECKING:
    import psycopg
    import pydantic


class RetryClass(StrEnum):
    """How a failure is retried. The values are written to headers and Postgres: never rename."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    RATE_LIMIT = "rate_limit"
    QUOTA = "quota"
    TIMEOUT = "timeout"


class InboxflowError(Exception):
    """Unexpected inboxflow error."""

    retry_class: ClassVar[RetryClass] = RetryClass.PERMANENT

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message or self.__doc__)
        self.retry_after = retry_after  # seconds, when the remote said so


class TransientError(InboxflowError):
    """A dependency failed in a way that usually passes; retry later."""

    retry_class = RetryClass.TRANSIENT


class DependencyUnavailableError(TransientError):
    """A circuit breaker is open for this dependency; the record waits instead of failing."""


class RateLimitedError(InboxflowError):
    """The remote asked us to slow down; retry after the time it gave."""

    retry_class = RetryClass.RATE_LIMIT


class QuotaExceededError(InboxflowError):
    """A quota is used up; retry when it resets."""

    retry_class = RetryClass.QUOTA


class StageTimeoutError(InboxflowError):
    """A stage ran past its deadline; the record is retried with the same deadline."""

    retry_class = RetryClass.TIMEOUT


class PermanentError(InboxflowError):
    """Retrying cannot help; the record goes to the dead-letter topic."""


class UndecodableRecordError(PermanentError):
    """The record's bytes match no known schema; fix the producer, then redrive from the DLQ."""


class StaleHistoryError(PermanentError):
    """The stored historyId is older than Gmail keeps; a full resync is needed."""


class AccountRevokedError(PermanentError):
    """Google refused the account's grant (invalid_grant): access was revoked or has expired.

    The sync stage marks the account ``revoked``, so nothing syncs it until it is granted again.
    """

    def __init__(self, user_id: str, detail: str = "") -> None:
        super().__init__(
            f"Google refused the Gmail grant of {user_id}"
            + (f" ({detail})" if detail else "")
            + ": the user revoked access, the grant expired, or a service account key was "
            "deleted. The account is marked revoked and no longer synced. Operator action: grant "
            f"access again with `inboxflow accounts add {user_id} --oauth` (or --service-account "
            "KEY.json), which makes it active again."
        )
        self.user_id = user_id
        self.detail = detail  # Google's error code and description


class CredentialsError(PermanentError):
    """The account's stored Gmail credentials cannot be used; fix the settings, then redrive."""


class MimeBombError(PermanentError):
    """The message's MIME tree is nested deeper or split into more parts than mail ever is.

    Such a message is hostile or broken beyond repair: parsing it would take minutes and memory
    for nothing, so it is refused before the tree is built and goes to the dead-letter topic.
    """


_ERROR_FOR_CLASS: dict[RetryClass, type[InboxflowError]] = {
    RetryClass.TRANSIENT: TransientError,
    RetryClass.RATE_LIMIT: RateLimitedError,
    RetryClass.QUOTA: QuotaExceededError,
    RetryClass.TIMEOUT: StageTimeoutError,
    RetryClass.PERMANENT: PermanentError,
}


def error_for(
    retry_class: RetryClass, message: str, *, retry_after: float | None = None
) -> InboxflowError:
    """Return the exception of ``retry_class`` (raise it ``from`` the dependency's own error)."""
    return _ERROR_FOR_CLASS[retry_class](message, retry_after=retry_after)


_MAX_MESSAGE = 500  # error text kept in headers and job rows


@dataclass(frozen=True)
class Failure:
    """A classified failure: its class, the wait the remote asked for, and a short message."""

    retry_class: RetryClass
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a class gets before the record is dead.

    Rate-limit and quota errors are the remote pacing us, not the record being bad, so they get a
    much larger budget than transient faults: at 30 % throttling a small budget would kill
    records that only needed to wait.
    """

    max_attempts: dict[RetryClass, int]

    @classmethod
    def default(cls) -> RetryPolicy:
        """Return the policy every stage uses unless configured otherwise."""
        return cls(
            {
                RetryClass.TRANSIENT: 8,
                RetryClass.TIMEOUT: 5,
                RetryClass.RATE_LIMIT: 30,
                RetryClass.QUOTA: 30,
                RetryClass.PERMANENT: 1,
            }
        )


@dataclass(frozen=True)
class RetryTier:
    """One step of a group's retry ladder: records wait ``delay_seconds`` there, then retry."""

    topic: str
    delay_seconds: int


@dataclass(frozen=True)
class Decision:
    """Where a failed record goes next.

    ``topic`` is a retry tier or the dead-letter topic; ``due_at`` (epoch seconds) is when a
    retry may run, None for the dead-letter topic.
    """

    topic: str
    due_at: float | None
    dead: bool


# Secrets that may sit inside a kept message (a URL in a connection error, a token a library
# echoed): each pattern and what replaces it.
# Replacements are functions or plain strings, never templates like r"\1***": ``re`` imports a
# helper module for templates on every call, which fails while the interpreter shuts down (a
# library's last log line then became a "Logging error" traceback instead of the line).
_SECRETS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str] | str], ...] = (
    # scheme://user:password@host (DATABASE_URL, a registry or API URL with credentials)
    (re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), lambda m: f"{m[1]}***@"),
    # password=... in libpq key/value strings, token=... or api_key=... in query strings
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|client_secret|token|access_token|refresh_token"
            r"|id_token|api[_-]?key|apikey|sig|signature)=(?:'[^']*'|[^\s&;,'\"]+)"
        ),
        lambda m: f"{m[1]}=***",
    ),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), lambda m: f"{m[1]} ***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)?"), "***"),  # JWT
    (re.compile(r"\bya29\.[A-Za-z0-9._-]+"), "***"),  # Google OAuth access token
    (re.compile(r"\b1//[A-Za-z0-9._-]{10,}"), "***"),  # Google OAuth refresh token
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), "***"),  # Google API key
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "***"),  # OpenAI-style API key
)
# A pydantic error location part that is an identifier names a field; anything else may be a
# dict key taken from the input (an address, a header), so it is not repeated.
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_LISTED_ERRORS = 10


def redact_secrets(text: str) -> str:
    """Return ``text`` with passwords in URLs, tokens and API keys replaced by ``***``. Pure."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _loaded(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The named exception classes of ``module`` if anything imported it, else none.

    An exception of a library nobody loaded cannot reach us, so classifying needs no import of
    its own: the CPU pool's workers, which only parse mail, then load no HTTP client, database
    driver, Kafka client or pydantic (tens of MiB each of them would hold for nothing).
    """
    loaded = sys.modules.get(module)
    if loaded is None:
        return ()
    return tuple(getattr(loaded, name) for name in names)


def _keeps_message(exc: BaseException) -> bool:
    # Ours, and libraries whose messages describe a connection or a protocol state, not data.
    kept = _loaded("aiokafka.errors", "KafkaError") + _loaded("aiohttp", "ClientError")
    return isinstance(exc, (InboxflowError, TimeoutError, *kept))


def safe_error_message(exc: BaseException) -> str:
    """Return what may be told of ``exc`` beyond its type; "" when nothing may. Pure.

    Kept (through ``redact_secrets``): the message of an ``InboxflowError``, an aiokafka
    ``KafkaError``, a ``TimeoutError`` or an aiohttp client error; of an ``OSError`` its errno
    and reason, not the file names. Reduced to structure that names no value: a pydantic
    ``ValidationError`` to each error's field location and error type (never ``input_value``);
    a psycopg error to its sqlstate and the table, column and constraint it names; a fastavro
    ``ValidationError`` to its field names; a ``JSONDecodeError`` to the parser's complaint and
    position; a ``UnicodeError`` to the codec, position and reason; an exception group to its
    members. Everything else (``ValueError``, ``KeyError``, email and MIME errors, anything not
    ours) may quote its input: nothing.
    """
    if _keeps_message(exc):
        return redact_secrets(str(exc))
    if isinstance(exc, BaseExceptionGroup):
        members = "; ".join(safe_error_text(e) for e in exc.exceptions[:_MAX_LISTED_ERRORS])
        return f"{len(exc.exceptions)} sub-exception(s): {members}"
    if isinstance(exc, OSError):
        if exc.errno is None or not exc.strerror:
            return ""
        return redact_secrets(f"[Errno {exc.errno}] {exc.strerror}")
    if isinstance(exc, _loaded("pydantic", "ValidationError")):
        return _pydantic_structure(cast("pydantic.ValidationError", exc))
    if isinstance(exc, _loaded("psycopg", "Error")):
        return _psycopg_structure(cast("psycopg.Error", exc))
    if isinstance(exc, _loaded("fastavro.validation", "ValidationError")):
        errors = getattr(exc, "errors", ())
        fields = sorted({str(getattr(e, "field", "")) for e in errors} - {""})
        return f"fields {', '.join(fields)}" if fields else ""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg}: line {exc.lineno} column {exc.colno} (char {exc.pos})"
    if isinstance(exc, UnicodeDecodeError | UnicodeEncodeError | UnicodeTranslateError):
        action = "decode" if isinstance(exc, UnicodeDecodeError) else "encode"
        codec = getattr(exc, "encoding", "unicode")
        return f"{codec!r} codec can't {action} position {exc.start}-{exc.end}: {exc.reason}"
    return ""


def safe_error_text(exc: BaseException) -> str:
    """Return ``Type: message`` for ``exc`` with only what ``safe_error_message`` keeps. Pure.

    An exception whose message is withheld or reduced also says where it was raised
    (``at file.py:12 in function``, from its traceback), so a bug stays findable without the
    text. Used for dead-letter headers, ``jobs.last_error``, HTTP answers and every log line.
    """
    name = type(exc).__name__
    message = safe_error_message(exc)
    text = f"{name}: {message}" if message else name
    if _keeps_message(exc) or isinstance(exc, OSError | BaseExceptionGroup):
        return text
    where = _raised_at(exc)
    return f"{text} at {where}" if where else text


def _raised_at(exc: BaseException) -> str:
    # The innermost frame of our own code (a library's frame says little about the cause),
    # else the innermost frame.
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    if not frames:
        return ""
    ours = [frame for frame in frames if not _is_library(frame[0].co_filename)]
    code, line = (ours or frames)[-1]
    path = PurePath(code.co_filename)
    return f"{PurePath(path.parent.name, path.name).as_posix()}:{line} in {code.co_name}"


_STDLIB = PurePath(sysconfig.get_paths()["stdlib"])


def _is_library(filename: str) -> bool:
    path = PurePath(filename)
    return (
        not path.is_absolute()  # <string>, or a compiled extension's own source path
        or "site-packages" in path.parts
        or "dist-packages" in path.parts
        or path.is_relative_to(_STDLIB)
    )


def _pydantic_structure(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    listed = "; ".join(
        f"{_location(error['loc'])} ({error['type']})" for error in errors[:_MAX_LISTED_ERRORS]
    )
    more = len(errors) - _MAX_LISTED_ERRORS
    suffix = f"; {more} more" if more > 0 else ""
    return f"{len(errors)} error(s) for {exc.title}: {listed}{suffix}"


def _location(loc: Sequence[int | str]) -> str:
    parts = [
        f"[{part}]" if isinstance(part, int) else part if _FIELD_NAME.fullmatch(part) else "*"
        for part in loc
    ]
    return ".".join(parts).replace(".[", "[") or "(model)"


def _psycopg_structure(exc: psycopg.Error) -> str:
    # The primary message and detail quote values ("Key (id)=(...)", "invalid input syntax for
    # type integer: ..."); the sqlstate and the schema's own names do not.
    diag = exc.diag
    named = [
        f"{label} {value}"
        for label, value in (
            ("table", diag.table_name),
            ("column", diag.column_name),
            ("constraint", diag.constraint_name),
        )
        if value
    ]
    parts = [f"sqlstate {exc.sqlstate}"] if exc.sqlstate else []
    return ", ".join(parts + named)


def classify(exc: BaseException) -> Failure:
    """Return the retry class of ``exc``; an exception nobody expected is PERMANENT (a bug).

    The failure's message is ``safe_error_text(exc)``: it goes to dead-letter headers and
    ``jobs.last_error``, so it never quotes the record.
    """
    message = safe_error_text(exc)[:_MAX_MESSAGE]
    if isinstance(exc, InboxflowError):
        return Failure(exc.retry_class, message, exc.retry_after)
    if isinstance(exc, (TimeoutError, *_loaded("aiohttp", "ServerTimeoutError"))):
        return Failure(RetryClass.TIMEOUT, message)
    unreachable = _loaded("psycopg", "OperationalError") + _loaded(
        "aiohttp", "ClientConnectionError"
    )
    if isinstance(exc, (ConnectionError, *unreachable)):
        return Failure(RetryClass.TRANSIENT, message)
    if isinstance(exc, _loaded("aiokafka.errors", "KafkaError")) and getattr(
        exc, "retriable", False
    ):
        return Failure(RetryClass.TRANSIENT, message)
    return Failure(RetryClass.PERMANENT, message)


def decide(
    failure: Failure,
    *,
    attempts: int,
    ladder: Sequence[RetryTier],
    dead_letter_topic: str,
    now: float,
    policy: RetryPolicy | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """Pick the next stop of a record that failed on its ``attempts``-th try (1-based).

    Tiers are used in order; once past the last one the record stays on the last tier until its
    class's budget is spent. A retry is due after the tier's delay with ±20 % jitter, and never
    before the wait the remote asked for (rate limits and quotas are due at their reset); such a
    wait also moves the record up to the first tier at least as long.
    """
    budget = (policy or RetryPolicy.default()).max_attempts.get(failure.retry_class, 1)
    if failure.retry_class is RetryClass.PERMANENT or attempts >= budget or not ladder:
        return Decision(dead_letter_topic, None, dead=True)
    tier = ladder[min(attempts - 1, len(ladder) - 1)]
    if failure.retry_after is not None:
        # A long wait goes to a tier at least that long: on a short tier it would pause the
        # tier's partition, and every other user's quick retries behind it, until its time.
        longer = [t for t in ladder if t.delay_seconds >= failure.retry_after] or [ladder[-1]]
        tier = max(tier, longer[0], key=lambda t: t.delay_seconds)
    jitter = (rng or random).uniform(0.8, 1.2)  # spreading load, not security
    wait = tier.delay_seconds * jitter
    if failure.retry_after is not None:
        wait = max(wait, failure.retry_after)
    return Decision(tier.topic, now + wait, dead=False)
