"""The local stack as one unit: Kafka + Postgres, started locally, by testcontainers, or not at all.

Three ways to get services, in this order:
1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` both given: use them, start nothing.
2. ``mode="testcontainers"`` and a reachable Docker engine: containers.
3. Otherwise Kafka from Maven jars and Postgres from the machine's binaries, on free ports.

Either everything starts or nothing is left running. ``Stack.state()`` is what ``dev up``
writes to its state file so ``dev down`` can stop processes started by an earlier command.

``secure=True`` (``dev up --secure``) starts the local services as a managed cloud would run
them: Kafka takes clients only over SASL_SSL (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN) and Postgres
only over TLS with a password (``verify-full``), both with certificates from a throwaway CA.
``Stack.client_env()`` holds the settings a client needs, written to ``<work_dir>/client.env``
(mode 0600, shell syntax: ``set -a; . client.env``); ``state()`` names that file and the CA but
holds no password.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from devstack.kafka import BrokerSecurity, KafkaBroker, start_broker
from devstack.postgres import DEFAULT_DATABASE, PostgresServer, PostgresTls, start_postgres
from devstack.processes import StackError, pid_alive, stop_group
from devstack.tls import make_ca
from topics.kafka import PLAINTEXT, KafkaSecurity

log = logging.getLogger(__name__)

StackMode = Literal["local", "testcontainers"]
T = TypeVar("T")

CLIENT_USER = "inboxflow"  # the Kafka user of a secure stack's clients
CLIENT_ENV_FILE = "client.env"


@dataclass
class Stack:
    """Running services and how to stop what this process started."""

    kafka_bootstrap: str
    database_url: str
    started: list[str] = field(default_factory=list)  # "kafka", "postgres" (plain words)
    kafka: KafkaBroker | None = None
    postgres: PostgresServer | None = None
    work_dir: Path | None = None
    kafka_security: KafkaSecurity = PLAINTEXT  # how clients connect to ``kafka_bootstrap``
    client_env_path: Path | None = None  # the settings as a shell file, when one was written
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    @property
    def secure(self) -> bool:
        """True when clients must use TLS and credentials."""
        return self.kafka_security.protocol != "PLAINTEXT"

    def client_env(self) -> dict[str, str]:
        """Return the environment a client process needs for this stack (passwords included).

        Every ``INBOXFLOW_KAFKA_*`` security setting is present, so these values replace any
        the caller's environment had.
        """
        security = self.kafka_security
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap,
            "INBOXFLOW_KAFKA_SECURITY_PROTOCOL": security.protocol,
            "INBOXFLOW_KAFKA_SASL_MECHANISM": security.mechanism,
            "DATABASE_URL": self.database_url,
        }
        optional = {
            "INBOXFLOW_KAFKA_SASL_USERNAME": security.username,
            "INBOXFLOW_KAFKA_SASL_PASSWORD": security.password,
            "INBOXFLOW_KAFKA_SSL_CAFILE": security.cafile,
            "INBOXFLOW_KAFKA_SSL_CERTFILE": security.certfile,
            "INBOXFLOW_KAFKA_SSL_KEYFILE": security.keyfile,
        }
        env.update({name: value for name, value in optional.items() if value})
        return env

    def write_client_env(self, path: Path) -> Path:
        """Write ``client_env()`` as ``NAME='value'`` lines, readable by the owner only."""
        lines = [f"{name}={shlex.quote(value)}\n" for name, value in self.client_env().items()]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(lines)
        self.client_env_path = path
        return path

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
        """Return a JSON-able description: URLs plus pids and folders to clean up.

        Holds no password (the database URL's is masked): ``client_env`` names the file that
        has them.
        """
        security = self.kafka_security
        return {
            "kafka_bootstrap": self.kafka_bootstrap,
            "database_url": _masked(self.database_url),
            "secure": self.secure,
            "kafka_security_protocol": security.protocol,
            "kafka_sasl_mechanism": security.mechanism if security.sasl else None,
            "kafka_sasl_username": security.username,
            "kafka_ssl_cafile": security.cafile,
            "client_env": str(self.client_env_path) if self.client_env_path else None,
            "started": self.started,
            "kafka_pid": self.kafka.pid if self.kafka else None,
            "postgres_pid": self.postgres.pid if self.postgres else None,
            "postgres_dir": str(self.postgres.data_dir.parent) if self.postgres else None,
            "work_dir": str(self.work_dir) if self.work_dir else None,
        }


def _masked(url: str) -> str:
    """Return ``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


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
    secure: bool = False,
    kafka_security: KafkaSecurity = PLAINTEXT,
) -> Stack:
    """Return a running stack, starting only what is not given.

    Args:
        kafka_bootstrap: an existing Kafka to use instead of starting one.
        database_url: an existing Postgres database to use instead of starting one.
        mode: ``local`` (Maven jars + machine binaries) or ``testcontainers`` (Docker engine).
        cache_dir: where the Kafka jars are cached between runs.
        die_with_parent: stop the services when this process dies (test sessions).
        secure: start Kafka with SASL_SSL only and Postgres with TLS only (local mode); the
            client settings are then in ``client_env()`` and ``<work_dir>/client.env``.
        kafka_security: how clients connect to the given ``kafka_bootstrap``.
    """
    if secure and mode != "local":
        raise StackError("a secure stack runs locally only: unset INBOXFLOW_STACK")
    if mode == "testcontainers" and not (kafka_bootstrap and database_url):
        return _start_containers(kafka_bootstrap, database_url)
    stack = Stack(kafka_bootstrap or "", database_url or "", kafka_security=kafka_security)
    if kafka_bootstrap and database_url:
        return stack
    try:
        # One folder for the broker, the CA and the client settings; ``dev down`` deletes it.
        work_dir = Path(tempfile.mkdtemp(prefix="inboxflow-kafka-"))
        stack.work_dir = work_dir
        ca = make_ca(work_dir / "ca") if secure else None
        if not database_url:
            pg_tls = PostgresTls(ca, secrets.token_hex(16)) if ca is not None else None
            stack.postgres = with_fresh_ports(
                lambda: start_postgres(root=None, die_with_parent=die_with_parent, tls=pg_tls)
            )
            stack._stoppers.append(stack.postgres.stop)
            stack.database_url = stack.postgres.url(DEFAULT_DATABASE)
            stack.started.append("postgres")
        if not kafka_bootstrap:
            password = secrets.token_hex(16)
            broker_security = (
                BrokerSecurity(ca, {CLIENT_USER: password}) if ca is not None else None
            )
            stack.kafka = with_fresh_ports(
                lambda: start_broker(
                    cache_dir=cache_dir,
                    work_dir=work_dir,
                    die_with_parent=die_with_parent,
                    security=broker_security,
                )
            )
            stack._stoppers.append(stack.kafka.stop)
            stack.kafka_bootstrap = stack.kafka.bootstrap
            stack.kafka_security = PLAINTEXT
            if ca is not None:
                stack.kafka_security = KafkaSecurity(
                    protocol="SASL_SSL",
                    mechanism="SCRAM-SHA-512",
                    username=CLIENT_USER,
                    password=password,
                    cafile=str(ca.cert_path),
                )
            stack.started.append("kafka")
        stack.write_client_env(work_dir / CLIENT_ENV_FILE)
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
    """Record what ``dev up`` started so a later ``dev down`` can stop it (owner-only file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(stack.state(), indent=2))


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
