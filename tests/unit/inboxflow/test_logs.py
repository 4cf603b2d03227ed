"""inboxflow.logs: JSON and text lines, safe exceptions, and aiokafka's outage noise tamed."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import datetime

import pytest
from pydantic import BaseModel

from inboxflow import logs
from inboxflow.logs import JsonFormatter, KafkaNoiseFilter, TextFormatter, configure_logging
from schemas.errors import StageTimeoutError
from tests.helpers import wait_until

CANARY = "CANARY-51d0"
CONTROL = {chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}


class Message(BaseModel):
    size: int


@pytest.fixture(autouse=True)
def restored_logging() -> Iterator[None]:
    """Undo configure_logging: root handlers and levels, hooks, bound fields."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    own = {name: logging.getLogger(name).level for name in (*logs.OWN_LOGGERS, *logs.KAFKA_LOGGERS)}
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    bound = dict(logs._bound)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, value in own.items():
            logging.getLogger(name).setLevel(value)
        sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
        logs._bound.clear()
        logs._bound.update(bound)
        logs._installed.clear()


def record(
    msg: str,
    *args: object,
    name: str = "streams.runtime.runner",
    level: int = logging.WARNING,
    exc: BaseException | None = None,
    **extra: object,
) -> logging.LogRecord:
    made = logging.LogRecord(
        name, level, __file__, 1, msg, args, (type(exc), exc, exc.__traceback__) if exc else None
    )
    made.__dict__.update(extra)
    return made


def _throw(exc: BaseException) -> None:
    raise exc


def raised(exc: BaseException) -> BaseException:
    try:
        _throw(exc)
    except BaseException as caught:  # noqa: BLE001 - returned with its traceback
        return caught
    raise AssertionError("did not raise")


def invalid_message() -> BaseException:
    try:
        Message(size=CANARY)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - the pydantic error, with its traceback
        return exc
    raise AssertionError("validated")


# --- formatters ---------------------------------------------------------------------------------


def test_a_json_line_has_the_fields_and_the_ids_passed_as_extra() -> None:
    line = JsonFormatter().format(
        record(
            "record dead-lettered group=%s",
            "inboxflow-normalize",
            user="alice@example.org",
            message_id="18e0c2f5a1b2c3d4",
            topic="inboxflow.gmail.message-fetched.v1",
            partition=2,
            offset=41,
        )
    )

    parsed = json.loads(line)
    assert parsed["level"] == "WARNING"
    assert parsed["logger"] == "streams.runtime.runner"
    assert parsed["msg"] == "record dead-lettered group=inboxflow-normalize"
    assert (parsed["user"], parsed["message_id"]) == ("alice@example.org", "18e0c2f5a1b2c3d4")
    assert (parsed["topic"], parsed["partition"], parsed["offset"]) == (
        "inboxflow.gmail.message-fetched.v1",
        2,
        41,
    )
    stamp = datetime.fromisoformat(parsed["ts"])
    assert parsed["ts"].endswith("Z")
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert "\n" not in line


def test_bound_fields_are_on_every_line() -> None:
    logs.bind(agent="normalize", group="inboxflow-normalize")

    parsed = json.loads(JsonFormatter().format(record("tick")))

    assert (parsed["agent"], parsed["group"]) == ("normalize", "inboxflow-normalize")


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_no_line_carries_terminal_control_codes(formatter: logging.Formatter) -> None:
    hostile = "progress \x1b[2K\r\x1b[?25l 50% \x9b31m \x07 \x08"

    line = formatter.format(record("%s", hostile, exc=raised(StageTimeoutError(hostile))))

    assert not CONTROL & set(line)


def test_json_exceptions_keep_frames_and_drop_quoted_input() -> None:
    exc = invalid_message()

    parsed = json.loads(JsonFormatter().format(record("normalize failed", exc=exc)))

    assert CANARY not in json.dumps(parsed)
    assert parsed["exc"].startswith("ValidationError: 1 error(s) for Message: size (int_parsing)")
    assert "Traceback (most recent call last):" in parsed["traceback"]
    assert "in invalid_message" in parsed["traceback"], "frames stay"


def test_a_chained_value_error_is_withheld_at_every_link() -> None:
    def parse() -> None:
        try:
            int(f"Subject: {CANARY}")
        except ValueError as exc:
            raise ValueError(f"cannot parse header {CANARY}") from exc

    try:
        parse()
    except ValueError as exc:
        line = JsonFormatter().format(record("failed", exc=exc))

    assert CANARY not in line
    parsed = json.loads(line)
    assert parsed["traceback"].count("ValueError (message withheld: it may quote input)") == 2
    assert "The above exception was the direct cause" in parsed["traceback"]


def test_our_errors_keep_their_text() -> None:
    exc = raised(StageTimeoutError("normalize took longer than 90s on a batch of 100"))

    parsed = json.loads(JsonFormatter().format(record("batch failed", exc=exc)))

    assert parsed["exc"] == "StageTimeoutError: normalize took longer than 90s on a batch of 100"
    assert parsed["traceback"].endswith(
        "StageTimeoutError: normalize took longer than 90s on a batch of 100"
    )


def test_exceptions_among_the_arguments_are_reduced_too() -> None:
    line = JsonFormatter().format(
        record("error=%s again=%r", ValueError(CANARY), KeyError(CANARY), ctx=ValueError(CANARY))
    )

    assert CANARY not in line
    assert json.loads(line)["msg"] == "error=ValueError again=KeyError"
    assert json.loads(line)["ctx"] == "ValueError"


def test_secrets_in_a_message_are_redacted() -> None:
    line = JsonFormatter().format(record("connecting to %s", f"postgresql://u:{CANARY}@db/x"))

    assert json.loads(line)["msg"] == "connecting to postgresql://u:***@db/x"


def test_text_lines_show_extra_fields_not_already_in_the_message() -> None:
    line = TextFormatter().format(record("sync listed user=%s", "a@x.test", user="a@x.test", n=3))

    assert line.endswith("WARNING streams.runtime.runner sync listed user=a@x.test [n=3]")


# --- configure_logging ------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_json_in_a_file_and_text_on_a_terminal() -> None:
    to_file, to_terminal = io.StringIO(), Terminal()

    configure_logging("auto", stream=to_file)
    logging.getLogger("inboxflow.test").warning("one")
    configure_logging("auto", stream=to_terminal)
    logging.getLogger("inboxflow.test").warning("two")

    assert json.loads(to_file.getvalue())["msg"] == "one"
    assert to_terminal.getvalue().rstrip().endswith("WARNING inboxflow.test two")
    assert "one" not in to_terminal.getvalue(), "the earlier handler was replaced"


def test_services_log_their_own_info_while_libraries_stay_at_warning() -> None:
    out = io.StringIO()
    configure_logging("json", level=logging.WARNING, own_level=logging.INFO, stream=out)

    logging.getLogger("streams.stages.sync").info("sync listed")
    logging.getLogger("faust.worker").info("Ready")
    logging.getLogger("aiokafka.consumer").info("joined")

    assert [json.loads(line)["msg"] for line in out.getvalue().splitlines()] == ["sync listed"]


def test_uncaught_exceptions_and_warnings_are_json_lines_too() -> None:
    out = io.StringIO()
    configure_logging("json", stream=out)

    exc = raised(ValueError(CANARY))
    sys.excepthook(type(exc), exc, exc.__traceback__)
    logging.getLogger("py.warnings").warning("a warning")  # what captureWarnings routes

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["level"], line["msg"]) for line in lines] == [
        ("CRITICAL", "uncaught exception"),
        ("WARNING", "a warning"),
    ]
    assert CANARY not in out.getvalue()


# --- aiokafka's noise ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Report = tuple[int, str, dict[str, object]]


def noise_filter(clock: Clock, reports: list[Report], **options: float) -> KafkaNoiseFilter:
    return KafkaNoiseFilter(
        clock=clock,
        report=lambda level, text, fields: reports.append((level, text, fields)),
        watchdog=False,
        **options,
    )


def unreachable() -> logging.LogRecord:
    return record(
        "Unable connect to node with id %s: %s",
        1,
        "[Errno 111] Connect call failed ('127.0.0.1', 9092)",
        name="aiokafka.client",
        level=logging.ERROR,
    )


def test_an_outage_of_ten_thousand_lines_is_a_handful_of_lines() -> None:
    clock, reports = Clock(), []
    noise = noise_filter(clock, reports, grace=10, reminder=60, quiet=5)
    start = clock.now

    passed = 0
    for i in range(10_000):  # 200 s of an unreachable broker, a line every 20 ms
        clock.now = start + i * 0.02
        passed += noise.filter(unreachable())
    clock.now += 1
    noise.check()  # the lines stop: not over yet
    clock.now += 5
    noise.check()

    assert passed == 0
    levels = [logging.getLevelName(level) for level, _, _ in reports]
    assert levels == ["INFO", "WARNING", "WARNING", "WARNING", "WARNING", "WARNING"]
    texts = [text for _, text, _ in reports]
    assert texts[0].startswith("waiting for Kafka: Unable connect to node with id 1")
    assert texts[1].startswith("Kafka unreachable for 10s: Unable connect to node with id 1")
    assert texts[2].startswith("Kafka still unreachable for 70s")
    assert texts[-1] == "Kafka reachable again after 200.0s (10000 lines suppressed)"
    counts = [int(str(fields["suppressed"])) for _, _, fields in reports[1:-1]]
    assert abs(counts[0] - 500) <= 1, "the lines of the grace period"
    assert all(abs(count - 3000) <= 1 for count in counts[1:]), "a minute of lines each"
    assert "similar lines suppressed" in texts[2]
    assert not noise.waiting


def test_the_group_coordinator_wait_at_start_says_nothing_above_info() -> None:
    clock, reports = Clock(), []
    noise = noise_filter(clock, reports)
    coordinator = record(
        "Group Coordinator Request failed: %s",
        "[Error 15] GroupCoordinatorNotAvailableError",
        name="aiokafka.consumer.group_coordinator",
        level=logging.ERROR,
    )

    for _ in range(30):  # 3 s of the coordinator being elected
        assert not noise.filter(coordinator)
        clock.now += 0.1
    clock.now += 10
    noise.check()

    assert [level for level, _, _ in reports] == [logging.INFO, logging.INFO]
    assert reports[-1][1].startswith("Kafka ready after 2.9s (30 lines suppressed)")


def test_a_long_outage_is_an_error_once() -> None:
    clock, reports = Clock(), []
    noise = noise_filter(clock, reports, grace=10, reminder=60, escalate_after=300)
    for _ in range(12 * 60):  # 12 minutes, a line a second
        noise.filter(unreachable())
        clock.now += 1

    errors = [text for level, text, _ in reports if level >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith("Kafka still unreachable for 310s")
    assert "Operator action" in errors[0]


def test_genuine_errors_pass_unchanged() -> None:
    clock, reports = Clock(), []
    noise = noise_filter(clock, reports)
    refused = record(
        "Topic %s is not authorized for this client",
        "t",
        name="aiokafka.cluster",
        level=logging.ERROR,
    )
    ours = record("dead letter refused group=%s", "g", level=logging.ERROR)

    assert noise.filter(refused)
    assert noise.filter(ours)
    assert refused.levelno == logging.ERROR
    assert reports == []


def test_rebalancing_heartbeats_are_info() -> None:
    noise = noise_filter(Clock(), [])
    rebalancing = record(
        "Heartbeat failed for group %s because it is rebalancing",
        "g",
        name="aiokafka.consumer.group_coordinator",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)

    assert not noise.filter(rebalancing), "INFO is below aiokafka's level"
    assert rebalancing.levelno == logging.INFO


def test_faust_symptoms_are_suppressed_only_during_an_outage() -> None:
    clock, reports = Clock(), []
    noise = noise_filter(clock, reports)
    symptom = record(
        "Aiokafka has not sent fetch request for %r since start (started %s)",
        "tp",
        "1 minute ago",
        name="faust.transport.drivers.aiokafka",
        level=logging.ERROR,
    )

    assert noise.filter(symptom)
    noise.filter(unreachable())
    assert not noise.filter(symptom)


def test_the_watchdog_ends_an_outage_when_nothing_else_is_logged() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    noise = KafkaNoiseFilter(grace=0.1, quiet=0.3)
    handler.addFilter(noise)
    library = logging.Logger("aiokafka.client")  # outside the tree: only this handler
    library.addHandler(handler)
    ours = logging.getLogger("inboxflow.kafka")
    ours.addHandler(handler)
    ours.propagate = False

    def still_unreachable() -> bool:
        library.error("Unable connect to node with id %s: %s", 1, "refused")
        return "Kafka unreachable" in out.getvalue()

    try:
        wait_until(still_unreachable, timeout=5, interval=0.05, message="the outage is told")
        wait_until(lambda: not noise.waiting, timeout=5, message="the watchdog ends the wait")
    finally:
        ours.removeHandler(handler)
        ours.propagate = True

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["level"] for line in lines][-1] == "WARNING"
    assert lines[-1]["msg"].startswith("Kafka reachable again after")
    assert all(line["logger"] == "inboxflow.kafka" for line in lines)
