"""Logging for every inboxflow process, configured in one place: format, levels, library noise.

``configure_logging`` is called once per process by the CLI root. It writes one JSON object per
line when the output is not a terminal (or ``INBOXFLOW_LOG_FORMAT=json``) and readable text on
a terminal; neither ever carries terminal control codes. Code attaches ids as structured fields
with ``extra=`` (``log.info("sync listed user=%s", user, extra={"user": user})``); ``bind``
adds fields to every line of the process (its agent and consumer group).

What a line must not carry: mail (subjects, bodies, correspondents' addresses) or secrets. The
formatters render every exception, in ``exc_info`` or among the arguments, through
``schemas.errors.safe_error_text`` (frames stay, messages that may quote input go) and run
``redact_secrets`` over the finished message.

Library loggers are tamed here too: aiokafka logs every retry of a broker it cannot reach at
ERROR (thousands of lines a minute from each process), and the normal wait for the group
coordinator at start-up the same way. ``KafkaNoiseFilter`` turns those into one line when an
outage starts, a reminder a minute while it lasts and one line when it ends;
``ServiceChatterFilter`` lowers mode's start/stop bookkeeping of each service to DEBUG.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Any, Literal, TextIO

from schemas.errors import redact_secrets, safe_error_message, safe_error_text

LogFormat = Literal["auto", "json", "text"]

# Loggers of our own packages; a service logs their INFO lines, libraries stay at WARNING.
OWN_LOGGERS = ("inboxflow", "streams", "sinks", "topics", "ops", "db", "schemas", "devstack")
KAFKA_LOGGERS = ("aiokafka", "kafka", "faust", "mode")

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
# C0 and C1 control characters and DEL, except newline and tab: what a terminal could act on.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_bound: dict[str, object] = {}


def bind(**fields: object) -> None:
    """Add ``fields`` (``agent=``, ``group=``) to every line this process logs from now on."""
    _bound.update(fields)


def wants_json(log_format: LogFormat, stream: IO[str]) -> bool:
    """Return True when lines to ``stream`` should be JSON: asked for, or not a terminal."""
    if log_format != "auto":
        return log_format == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return True


class _SafeArgument:
    """An exception among a log call's arguments, shown as its safe text by %s and %r."""

    def __init__(self, exc: BaseException) -> None:
        self.text = safe_error_text(exc)

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


def _safe_argument(value: object) -> object:
    return _SafeArgument(value) if isinstance(value, BaseException) else value


def safe_message(record: logging.LogRecord) -> str:
    """Return the record's message with exceptions among its arguments reduced, secrets gone."""
    msg: object = record.msg
    if isinstance(msg, BaseException):
        msg = safe_error_text(msg)
    args: Any = record.args
    if isinstance(args, Mapping):
        args = {key: _safe_argument(value) for key, value in args.items()}
    elif isinstance(args, tuple):
        args = tuple(_safe_argument(value) for value in args)
    text = str(msg)
    if args:
        try:
            text = text % args
        except (TypeError, ValueError, KeyError):  # a bad format string must not lose the line
            text = f"{text} {args!r}"
    return redact_secrets(text)


def render_exception(exc: BaseException) -> str:
    """Return a traceback of ``exc`` (and its causes) whose exception lines are safe texts.

    Frames (file, line, function and the source line) are kept as Python prints them; each
    exception's own line is ``Type: safe message``, with a note when the message was withheld.
    """
    return "\n".join(_traceback_lines(exc, set()))


def _traceback_lines(exc: BaseException, seen: set[int]) -> list[str]:
    seen.add(id(exc))
    lines: list[str] = []
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        lines += _traceback_lines(cause, seen)
        lines += ["", "The above exception was the direct cause of the following exception:", ""]
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        lines += _traceback_lines(context, seen)
        lines += ["", "During handling of the above exception, another exception occurred:", ""]
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):")
        frames = traceback.format_list(traceback.extract_tb(exc.__traceback__))
        lines += [line for frame in frames for line in frame.rstrip("\n").split("\n")]
    lines.append(_exception_line(exc))
    if isinstance(exc, BaseExceptionGroup):
        for number, member in enumerate(exc.exceptions[:10], start=1):
            lines.append(f"+---- {number} ----")
            lines += [f"| {line}" for line in _traceback_lines(member, seen)]
    return lines


def _exception_line(exc: BaseException) -> str:
    name = type(exc).__qualname__
    message = safe_error_message(exc)
    if message:
        return f"{name}: {message}"
    try:
        withheld = bool(str(exc))
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the line
        withheld = True
    return f"{name} (message withheld: it may quote input)" if withheld else name


def _exception_of(record: logging.LogRecord) -> BaseException | None:
    info = record.exc_info
    if isinstance(info, tuple) and info[1] is not None:
        return info[1]
    return None


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, BaseException):
        return safe_error_text(value)
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _json_value(item) for key, item in value.items()}
    return redact_secrets(str(value))


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = dict(_bound)
    for key, value in record.__dict__.items():
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
            fields[key] = value
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, msg, pid, bound and extra
    fields, and for an exception ``exc`` (its safe text) and ``traceback``.

    Output is ASCII (``ensure_ascii``): control characters, C1 codes included, are escaped.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": safe_message(record),
            "pid": record.process,
        }
        for key, value in _fields(record).items():
            line.setdefault(key, _json_value(value))
        exc = _exception_of(record)
        if exc is not None:
            line["exc"] = safe_error_text(exc)
            line["traceback"] = render_exception(exc)
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger message key=value ...``, then the traceback; no colours, and control
    characters other than newline and tab shown escaped."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{key}={_json_value(value)}"
            for key, value in _fields(record).items()
            if f"{key}=" not in str(record.msg)  # already in the message, house style
        )
        text = f"{_timestamp(record)} {record.levelname} {record.name} {safe_message(record)}"
        if fields:
            text = f"{text} [{fields}]"
        exc = _exception_of(record)
        if exc is not None:
            text = f"{text}\n{render_exception(exc)}"
        if record.stack_info:
            text = f"{text}\n{record.stack_info}"
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


# aiokafka messages that mean "cannot talk to the broker (yet)": every retry logs one. Matched
# against the unformatted message, and for the generic ones against the error named in it.
_UNREACHABLE_MESSAGES = (
    "Unable connect to",
    "Unable to update metadata",
    "Unable to request metadata",
    "Group Coordinator Request failed",
    "FindCoordinator Request failed",
    "Marking the coordinator dead",
    "Heartbeat send request failed",
    "Heartbeat session expired",
    "Failed fetch messages from",
    "Failed fetch offsets from",
    "Got error produce response",
    "Cannot send %r to %s",
    "Could not send %r",
)
_UNREACHABLE_ERRORS = re.compile(
    r"NodeNotReadyError|KafkaConnectionError|GroupCoordinatorNotAvailableError"
    r"|NotCoordinatorForGroupError|RequestTimedOutError|LeaderNotAvailableError"
    r"|NotLeaderForPartitionError|Connect call failed|Connection refused"
)
# Routine group coordination (a rebalance, a restarted member): INFO, not a problem.
_ROUTINE_MESSAGES = (
    "Heartbeat failed for group",
    "Heartbeat failed: local member_id was not recognized",
    "OffsetCommit failed for group %s due to a coordinator error",
    "OffsetCommit failed for group %s because group is initializing",
)
# What faust says about fetching while the broker is away: consequences, told by the outage line.
_OUTAGE_SYMPTOMS = (
    "No active partitions for",
    "Aiokafka has not sent fetch request",
    "Aiokafka has not received fetch response",
    "Aiokafka stopped fetching",
    "Broker stopped responding",
    "Highwater not yet available",
    "Has not committed",
)


class KafkaNoiseFilter(logging.Filter):
    """Turns aiokafka's per-retry "broker unreachable" lines into one line per outage.

    A handler filter rather than logger levels: aiokafka logs these at ERROR from a dozen
    modules, beside errors that need an operator, and offers no hook of its own; a filter on the
    handler sees every library logger's records in one place without patching the library.

    * The first such line starts a wait; while it lasts under ``grace`` seconds (the normal wait
      for the group coordinator at start-up, a leader election) nothing is said above INFO.
    * Past ``grace``, one WARNING ``Kafka unreachable for Ns: <latest line>``; every
      ``reminder`` seconds another, with the count of lines suppressed since the last one; the
      first reminder past ``escalate_after`` is an ERROR (someone must look), once.
    * When no such line came for ``quiet`` seconds the wait is over: one line saying so, WARNING
      if the outage was announced, else INFO. A watchdog thread notices that even when nothing
      else is logged; ``check`` does the same on demand.

    Routine coordination lines (rebalances) are lowered to INFO; faust's complaints about
    fetching are suppressed while an outage is on. Everything else passes unchanged.
    """

    def __init__(
        self,
        *,
        grace: float = 10.0,
        reminder: float = 60.0,
        quiet: float = 5.0,
        escalate_after: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[int, str, dict[str, object]], None] | None = None,
        watchdog: bool = True,
    ) -> None:
        super().__init__()
        self.grace, self.reminder, self.quiet = grace, reminder, quiet
        self.escalate_after = escalate_after
        self._clock = clock
        self._report = report or _report_to("inboxflow.kafka")
        self._watchdog = watchdog
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._since: float | None = None  # first noisy line of the current wait
        self._last = 0.0  # latest noisy line
        self._latest = ""  # its text
        self._announced = False
        self._escalated = False
        self._reported_at = 0.0
        self._suppressed = 0  # since the last report
        self._total = 0  # in this wait

    @property
    def waiting(self) -> bool:
        """True while a wait (or an outage) is in progress."""
        return self._since is not None

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for noise (counted), True for every other record."""
        if not record.name.startswith(KAFKA_LOGGERS):
            self.check()
            return True
        template = str(record.msg)
        if record.name.startswith(("faust", "mode")):
            if self.waiting and any(s in template for s in _OUTAGE_SYMPTOMS):
                with self._lock:
                    self._suppressed += 1
                    self._total += 1
                return False
            self.check()
            return True
        if template.startswith(_ROUTINE_MESSAGES):
            if record.levelno > logging.INFO:
                record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        if template.startswith(_UNREACHABLE_MESSAGES) or (
            record.levelno >= logging.WARNING and _UNREACHABLE_ERRORS.search(safe_message(record))
        ):
            self._noise(safe_message(record))
            return False
        self.check()
        return True

    def _noise(self, text: str) -> None:
        now = self._clock()
        reports: list[tuple[int, str, dict[str, object]]] = []
        with self._lock:
            first = self._since is None
            if first:
                self._since = now
                self._announced = self._escalated = False
                self._suppressed = self._total = 0
                self._reported_at = now
            self._last, self._latest = now, text
            self._suppressed += 1
            self._total += 1
            since = self._since if self._since is not None else now
            lasted = now - since
            if first:
                reports.append(
                    (logging.INFO, f"waiting for Kafka: {text}", {"kafka_wait_seconds": 0.0})
                )
                self._suppressed = 0
            elif not self._announced and lasted >= self.grace:
                self._announced = True
                reports.append(self._summary(logging.WARNING, "Kafka unreachable", lasted, now))
            elif self._announced and now - self._reported_at >= self.reminder:
                level = logging.WARNING
                if lasted >= self.escalate_after and not self._escalated:
                    self._escalated, level = True, logging.ERROR
                reports.append(self._summary(level, "Kafka still unreachable", lasted, now))
        if first:
            self._start_watchdog()
        self._emit(reports)

    def _summary(
        self, level: int, what: str, lasted: float, now: float
    ) -> tuple[int, str, dict[str, object]]:
        text = (
            f"{what} for {lasted:.0f}s: {self._latest} "
            f"({self._suppressed} similar lines suppressed)"
        )
        if level >= logging.ERROR:
            text += ". Operator action: check the brokers and the network to them"
        fields: dict[str, object] = {
            "kafka_wait_seconds": round(lasted, 1),
            "suppressed": self._suppressed,
        }
        self._suppressed, self._reported_at = 0, now
        return level, text, fields

    def check(self, now: float | None = None) -> None:
        """End the current wait if no noisy line came for ``quiet`` seconds (says so, once)."""
        if self._since is None:
            return
        now = self._clock() if now is None else now
        reports: list[tuple[int, str, dict[str, object]]] = []
        with self._lock:
            if self._since is None or now - self._last < self.quiet:
                return
            lasted = self._last - self._since
            level = logging.WARNING if self._announced else logging.INFO
            what = "Kafka reachable again after" if self._announced else "Kafka ready after"
            reports.append(
                (
                    level,
                    f"{what} {lasted:.1f}s ({self._total} lines suppressed)",
                    {"kafka_wait_seconds": round(lasted, 1), "suppressed": self._total},
                )
            )
            self._since = None
        self._emit(reports)

    def _emit(self, reports: Iterable[tuple[int, str, dict[str, object]]]) -> None:
        for level, text, fields in reports:  # outside the lock: reporting logs, which filters
            self._report(level, text, fields)

    def _start_watchdog(self) -> None:
        if not self._watchdog or (self._thread is not None and self._thread.is_alive()):
            return
        self._thread = threading.Thread(
            target=self._watch, name="inboxflow-kafka-noise", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        while self._since is not None:
            time.sleep(min(1.0, self.quiet / 2))
            self.check()


class ServiceChatterFilter(logging.Filter):
    """Lowers mode's per-service lifecycle lines (``[^--Consumer]: Starting...``) to DEBUG.

    mode logs them at INFO through the logger of the module that defines each service, which
    for our own services (the faust App subclass, the retry relay's service) is one of ours:
    a service's INFO would otherwise be a dozen lines of library bookkeeping at every start and
    stop. Only INFO lines are lowered; a warning or an error from a service stays.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for a lowered line its logger does not log at DEBUG."""
        if record.levelno != logging.INFO or not str(record.msg).startswith("[^"):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _report_to(name: str) -> Callable[[int, str, dict[str, object]], None]:
    logger = logging.getLogger(name)

    def report(level: int, text: str, fields: dict[str, object]) -> None:
        logger.log(level, "%s", text, extra=fields)

    return report


_installed: list[logging.Handler] = []


def configure_logging(
    log_format: LogFormat = "auto",
    *,
    level: int = logging.WARNING,
    own_level: int | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure this process's logging; call once, before anything logs. Idempotent.

    Args:
        log_format: ``json``, ``text`` or ``auto`` (text on a terminal, else JSON).
        level: the root level, which libraries (aiokafka, faust, mode, ...) inherit.
        own_level: the level of inboxflow's own packages (default ``level``); services log
            their INFO lines while libraries stay at WARNING.
        stream: where lines go; default ``sys.stderr`` as it is at each line.

    Also routes ``warnings``, uncaught exceptions (main thread and others) and unraisable ones
    through the same handler, so nothing reaches the output unformatted. Returns the handler.
    """
    target = stream if stream is not None else sys.stderr
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if wants_json(log_format, target) else TextFormatter())
    handler.addFilter(ServiceChatterFilter())
    handler.addFilter(KafkaNoiseFilter())
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
    _installed[:] = [handler]
    root.addHandler(handler)
    root.setLevel(level)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own_level if own_level is not None else level)
    for name in KAFKA_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)  # inherit the root's
    logging.captureWarnings(True)
    # Replace only the interpreter's own hooks (they print raw tracebacks): one a test runner
    # installed to collect failures stays.
    if sys.excepthook in (sys.__excepthook__, _log_uncaught):
        sys.excepthook = _log_uncaught
    if threading.excepthook in (threading.__excepthook__, _log_uncaught_in_thread):
        threading.excepthook = _log_uncaught_in_thread
    if sys.unraisablehook in (sys.__unraisablehook__, _log_unraisable):
        sys.unraisablehook = _log_unraisable
    return handler


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("inboxflow").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_unraisable(unraisable: Any) -> None:
    # An exception Python cannot raise (in __del__, a finalizer): its object's repr could be
    # anything, so only the exception is told, safely.
    exc = unraisable.exc_value
    if exc is None:
        return
    logging.getLogger("inboxflow").warning(
        "unraisable exception", exc_info=(type(exc), exc, unraisable.exc_traceback)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    logging.getLogger("inboxflow").critical(
        "uncaught exception in thread %s",
        getattr(args.thread, "name", "?"),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
