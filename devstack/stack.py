"""The local stack as one unit: Kafka + Postgres, started locally, by testcontainers, or not at all.

Three ways to get services, in this order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` both given: use them, start nothing.
2. ``mode="testcontainers"`` and a reachable Docker engine: containers.
3. Otherwise Kafka from Maven jars and Postgres from the machine's binaries, on free ports.

Either everything starts or nothing is left running. ``Stack.state()`` is what ``dev up``
writes to its state file so ``dev down`` can stop processes started by an earlier command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from devstack.kafka import KafkaBroker, start_broker
from devstack.postgres import DEFAULT_DATABASE, PostgresServer, start_postgres
from devstack.processes import StackError, pid_alive, stop_group

log = logging.getLogger(__name__)

StackMode = Literal["local", "testcontainers"]
T = TypeVar("T")


@dataclass
class Stack:
    """Running services and how to stop what this process started."""

    kafka_bootstrap: str
    database_url: str
    started: list[str] = field(default_factory=list)  # "kafka", "postgres" (plain words)
    kafka: KafkaBroker | None = None
    postgres: PostgresServer | None = None
    work_dir: Path | None = None
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop everything this stack started, newest first; never raises halfway."""
        while self._stoppers:
            stopper = self._stoppers.pop()
            try:
                stopper()
            except Exception:  # teardown must reach every service
                log.exception("stack teardown step failed")
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def state(self) -> dict[str, Any]:
        """Return a JSON-able description: URLs plus pids and folders to clean up."""
        return {
            "kafka_bootstrap": self.kafka_bootstrap,
            "database_url": self.database_url,
            "started": self.started,
            "kafka_pid": self.kafka.pid if self.kafka else None,
            "postgres_pid": self.postgres.pid if self.postgres else None,
            "postgres_dir": str(self.postgres.data_dir.parent) if self.postgres else None,
            "work_dir": str(self.work_dir) if self.work_dir else None,
        }


_PORT_TAKEN = ("Address already in use", "BindException", "could not bind")
_PORT_ATTEMPTS = 3


def with_fresh_ports(start: Callable[[], T]) -> T:
    """Call ``start`` again (it picks new free ports) when another process took a port first.

    Free ports are found by binding and releasing, so something else can grab one before the
    service binds it; that race is retried, any other failure is not.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        try:
            return start()
        except StackError as exc:
            if attempt == _PORT_ATTEMPTS or not any(s in str(exc) for s in _PORT_TAKEN):
                raise
            log.warning("port taken, retrying with another (attempt %s): %s", attempt, exc)
    raise AssertionError("unreachable")  # pragma: no cover


def start_stack(
    *,
    kafka_bootstrap: str | None,
    database_url: str | None,
    mode: StackMode,
    cache_dir: Path,
    die_with_parent: bool,
) -> Stack:
    """Return a running stack, starting only what is not given.

    Args:
        kafka_bootstrap: an existing Kafka to use instead of starting one.
        database_url: an existing Postgres database to use instead of starting one.
        mode: ``local`` (Maven jars + machine binaries) or ``testcontainers`` (Docker engine).
        cache_dir: where the Kafka jars are cached between runs.
        die_with_parent: stop the services when this process dies (test sessions).
    """
    if mode == "testcontainers" and not (kafka_bootstrap and database_url):
        return _start_containers(kafka_bootstrap, database_url)
    stack = Stack(kafka_bootstrap or "", database_url or "")
    try:
        if not database_url:
            stack.postgres = with_fresh_ports(
                lambda: start_postgres(root=None, die_with_parent=die_with_parent)
            )
            stack._stoppers.append(stack.postgres.stop)
            stack.database_url = stack.postgres.url(DEFAULT_DATABASE)
            stack.started.append("postgres")
        if not kafka_bootstrap:
            work_dir = Path(tempfile.mkdtemp(prefix="inboxflow-kafka-"))
            stack.work_dir = work_dir
            stack.kafka = with_fresh_ports(
                lambda: start_broker(
                    cache_dir=cache_dir, work_dir=work_dir, die_with_parent=die_with_parent
                )
            )
            stack._stoppers.append(stack.kafka.stop)
            stack.kafka_bootstrap = stack.kafka.bootstrap
            stack.started.append("kafka")
    except BaseException:
        stack.stop()
        raise
    return stack


def _start_containers(kafka_bootstrap: str | None, database_url: str | None) -> Stack:
    try:
        from testcontainers.core.container import DockerContainer
        from testcontainers.postgres import PostgresContainer
    except ImportError:
        raise StackError(
            "INBOXFLOW_STACK=testcontainers needs the extra: "
            "pip install 'inboxflow[testcontainers]'"
        ) from None
    from devstack.processes import free_port

    stack = Stack(kafka_bootstrap or "", database_url or "")
    try:
        if not database_url:
            pg = PostgresContainer("postgres:15", driver=None).start()
            stack._stoppers.append(pg.stop)
            stack.database_url = pg.get_connection_url()
            stack.started.append("postgres (container)")
        if not kafka_bootstrap:
            port = free_port()
            kafka = (
                DockerContainer("apache/kafka:4.1.1")
                .with_bind_ports(9092, port)
                .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{port}")
                .with_env("KAFKA_LISTENERS", "PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093")
                .with_env("KAFKA_NODE_ID", "1")
                .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
                .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
                .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
                .with_env(
                    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                )
                .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
                .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
                .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
                .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
                .start()
            )
            stack._stoppers.append(kafka.stop)
            _wait_container_log(kafka, "Kafka Server started")
            stack.kafka_bootstrap = f"127.0.0.1:{port}"
            stack.started.append("kafka (container)")
    except BaseException:
        stack.stop()
        raise
    return stack


def _wait_container_log(container: Any, line: str, timeout: float = 120.0) -> None:
    from devstack.processes import wait_for

    def ready() -> bool:
        out, err = container.get_logs()
        return line in (out + err).decode(errors="replace")

    wait_for(ready, timeout=timeout, what="Kafka container")


# --- dev up / down state file -------------------------------------------------------------


def write_state(path: Path, stack: Stack) -> None:
    """Record what ``dev up`` started so a later ``dev down`` can stop it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stack.state(), indent=2))


def read_state(path: Path) -> dict[str, Any] | None:
    """Return the recorded state, or None when no stack was brought up."""
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def stop_from_state(path: Path) -> list[str]:
    """Stop the processes recorded in the state file and delete their folders."""
    import signal

    state = read_state(path)
    if state is None:
        return []
    stopped = []
    if state.get("kafka_pid") and pid_alive(state["kafka_pid"]):
        stop_group(state["kafka_pid"], grace=15.0)
        stopped.append("kafka")
    if state.get("postgres_pid") and pid_alive(state["postgres_pid"]):
        stop_group(state["postgres_pid"], sig=signal.SIGINT, grace=20.0)
        stopped.append("postgres")
    for key in ("work_dir", "postgres_dir"):
        if state.get(key):
            shutil.rmtree(state[key], ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return stopped


def status_from_state(path: Path) -> dict[str, Any]:
    """Return the recorded state with whether each started process is still alive."""
    state = read_state(path) or {}
    return {
        **state,
        "kafka_running": bool(state.get("kafka_pid")) and pid_alive(state["kafka_pid"]),
        "postgres_running": bool(state.get("postgres_pid")) and pid_alive(state["postgres_pid"]),
    }
