"""A single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) from Maven jars.

Maven resolves the broker classpath from ``resources/kafka-pom.xml`` into a cache outside the
work tree, so only the first start needs the network. The broker gets a fresh storage directory,
free loopback ports and settings sized for a 2-core machine.

With ``BrokerSecurity`` clients connect only over SASL_SSL, as to a managed cluster: a PEM
keystore with a certificate from the throwaway CA (``devstack.tls``), SCRAM-SHA-512,
SCRAM-SHA-256 and PLAIN, and users whose SCRAM credentials are written into the metadata log
when the storage is formatted (``StorageTool format --add-scram``), so they exist from the first
second. Broker-to-broker traffic uses SASL_SSL too, as a user of its own; the controller
listener stays plaintext on loopback. Nothing here is for production keys or passwords.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from devstack.maven import resolve_once
from devstack.processes import (
    StackError,
    free_port,
    log_tail,
    run_checked,
    spawn,
    stop_group,
    wait_for,
)
from devstack.tls import CertificateAuthority, issue

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
STARTED_LINE = "Kafka Server started"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"

_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
{listeners}log.dirs={data_dir}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=2097152
log.segment.delete.delay.ms=1000
log.initial.task.delay.ms=100
"""


# The SASL_SSL variant: replaces the listener lines of ``_SERVER_PROPERTIES``.
_SECURE_LISTENERS = """\
listeners=SASL_SSL://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{broker_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram_jaas_broker}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram_jaas}
listener.name.sasl_ssl.plain.sasl.jaas.config={plain_jaas}
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={truststore}
ssl.client.auth=none
"""
_PLAINTEXT_LISTENERS = """\
listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
"""
_SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
BROKER_USER = "inboxflow-broker"  # the broker's own SCRAM user, for inter-broker connections
# Names and passwords go into JAAS strings and --add-scram's [name=...,password=...] syntax.
_SAFE_CREDENTIAL = re.compile(r"[A-Za-z0-9._@+-]+")


@dataclass(frozen=True)
class BrokerSecurity:
    """Serve clients over SASL_SSL only, with a certificate signed by ``ca``.

    Attributes:
        ca: the CA that signs the broker's certificate; clients verify against ``ca.cert_path``.
        users: user name -> password, each usable with SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN.
    """

    ca: CertificateAuthority
    users: Mapping[str, str] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.users:
            raise ValueError("a secure broker needs at least one user")
        for name, password in self.users.items():
            if not _SAFE_CREDENTIAL.fullmatch(name) or not _SAFE_CREDENTIAL.fullmatch(password):
                raise ValueError(
                    f"user {name!r}: names and passwords may hold only letters, digits and ._@+-"
                )
        if BROKER_USER in self.users:
            raise ValueError(f"{BROKER_USER!r} is the broker's own user")


def _jaas(module: str, **options: str) -> str:
    pairs = "".join(f' {key}="{value}"' for key, value in options.items())
    return f"{module} required{pairs};"


def _secure_listeners(
    security: BrokerSecurity, work_dir: Path, broker_port: int, controller_port: int
) -> tuple[str, list[str]]:
    """Return the listener properties and the StorageTool arguments that add the SCRAM users."""
    server = issue(security.ca, work_dir / "tls", "broker")
    # A PEM keystore file holds the private key and the certificate chain together.
    keystore = work_dir / "tls" / "broker-keystore.pem"
    fd = os.open(keystore, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(server.key_path.read_bytes() + server.cert_path.read_bytes())
    broker_password = secrets.token_hex(16)
    users = {**security.users, BROKER_USER: broker_password}
    plain_users = {f"user_{name}": password for name, password in users.items()}
    properties = _SECURE_LISTENERS.format(
        broker_port=broker_port,
        controller_port=controller_port,
        scram_jaas_broker=_jaas(_SCRAM_MODULE, username=BROKER_USER, password=broker_password),
        scram_jaas=_jaas(_SCRAM_MODULE),
        plain_jaas=_jaas(_PLAIN_MODULE, **plain_users),
        keystore=keystore,
        truststore=security.ca.cert_path,
    )
    scram = [
        argument
        for name, password in users.items()
        for mechanism in _SCRAM_MECHANISMS
        for argument in ("--add-scram", f"{mechanism}=[name={name},password={password}]")
    ]
    return properties, scram


def _cluster_id() -> str:
    """Return a cluster id in Kafka's own format (URL-safe base64 of a random UUID)."""
    while True:
        raw = uuid.uuid4()
        text = base64.urlsafe_b64encode(raw.bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def ensure_classpath(cache_dir: Path, version: str = KAFKA_VERSION) -> Path:
    """Return the folder of broker jars, resolving it with Maven on first use.

    Raises:
        StackError: no ``java``/``mvn`` on PATH, or Maven could not resolve the jars.
    """
    libs = cache_dir / f"kafka-{version}" / "libs"
    resolve_once(
        libs,
        "kafka-pom.xml",
        "dependency:copy-dependencies",
        [f"kafka.version={version}", f"kafka.libs.dir={libs}"],
        f"the Kafka {version} broker jars",
    )
    return libs


@dataclass
class KafkaBroker:
    """A broker; ``halt()``/``start()`` keep its ports, config and storage, ``stop()`` ends it."""

    bootstrap: str
    pid: int
    work_dir: Path
    process: subprocess.Popen[bytes] | None = None
    security: BrokerSecurity | None = None
    argv: list[str] = field(default_factory=list, repr=False)  # the JVM command line
    die_with_parent: bool = False

    @property
    def security_protocol(self) -> str:
        """What clients must speak on ``bootstrap``: PLAINTEXT, or SASL_SSL when secure."""
        return "PLAINTEXT" if self.security is None else "SASL_SSL"

    @property
    def log_path(self) -> Path:
        """The broker's console log; every start appends to it."""
        return self.work_dir / "broker.log"

    def start(self, timeout: float = 120.0) -> None:
        """Start the JVM on the existing config and storage; wait for its "started" line.

        Only a line written by this start counts: the log keeps those of earlier runs.
        """
        if self.pid:
            raise StackError(f"Kafka broker pid {self.pid} is still running")
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = spawn(
            self.argv, log_path=self.log_path, die_with_parent=self.die_with_parent
        )
        self.pid = self.process.pid

        def started() -> bool:
            with self.log_path.open("rb") as log_file:
                log_file.seek(offset)
                return STARTED_LINE.encode() in log_file.read()

        wait_for(
            started,
            timeout=timeout,
            what="Kafka broker",
            process=self.process,
            log_path=self.log_path,
        )

    def halt(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the JVM, keeping config and storage; ``SIGKILL`` makes it a crash.

        After SIGTERM a broker that outlives the grace period is killed.
        """
        if self.pid:
            stop_group(self.pid, sig=sig, grace=15.0)
            if self.process is not None:
                self.process.wait(timeout=5)
            self.pid = 0

    def restart(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 120.0) -> None:
        """Halt and start again on the same ports, config and storage (for outage tests)."""
        self.halt(sig)
        self.start(timeout)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a grace period)."""
        self.halt()


def _jvm_args(libs: Path, log_config: Path, heap: str) -> list[str]:
    return [
        "java",
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # fastest start; the local stack is not for throughput
        "-Xshare:auto",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log_config}",
        f"-Dkafka.logs.dir={log_config.parent}",
        "-cp",
        f"{libs}/*",
    ]


def start_broker(
    *,
    cache_dir: Path,
    work_dir: Path,
    die_with_parent: bool,
    heap: str = "384m",
    timeout: float = 120.0,
    security: BrokerSecurity | None = None,
) -> KafkaBroker:
    """Format fresh storage and start a broker on free 127.0.0.1 ports; wait until ready.

    Args:
        cache_dir: where the Maven-resolved jars are kept between runs.
        work_dir: scratch folder for config, storage and log; created if missing.
        die_with_parent: have the kernel stop the broker when this process dies (test sessions).
        heap: JVM heap, small by default for a 2-core machine.
        timeout: seconds to wait for the "Kafka Server started" line.
        security: serve clients over SASL_SSL only, with these users; None: PLAINTEXT.
    """
    libs = ensure_classpath(cache_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_config = work_dir / "log4j2.properties"
    log_config.write_bytes(
        (resources.files("devstack") / "resources" / "kafka-log4j2.properties").read_bytes()
    )
    broker_port, controller_port = free_port(), free_port()
    data_dir = work_dir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    config = work_dir / "server.properties"
    scram: list[str] = []
    if security is None:
        listeners = _PLAINTEXT_LISTENERS.format(
            broker_port=broker_port, controller_port=controller_port
        )
    else:
        listeners, scram = _secure_listeners(security, work_dir, broker_port, controller_port)
    # Mode 0600: a secure broker's file holds its own password and the PLAIN users'.
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(
            _SERVER_PROPERTIES.format(
                controller_port=controller_port, listeners=listeners, data_dir=data_dir
            )
        )
    jvm = _jvm_args(libs, log_config, heap)
    run_checked(
        [*jvm, _STORAGE_TOOL, "format", "-t", _cluster_id(), "-c", str(config), *scram],
        what="formatting Kafka storage",
    )
    (work_dir / "broker.log").write_text("")
    broker = KafkaBroker(
        f"127.0.0.1:{broker_port}",
        0,
        work_dir,
        security=security,
        argv=[*jvm, _MAIN_CLASS, str(config)],
        die_with_parent=die_with_parent,
    )
    try:
        broker.start(timeout)
    except BaseException:
        broker.stop()
        raise
    log.info(
        "kafka started bootstrap=%s pid=%s protocol=%s",
        broker.bootstrap,
        broker.pid,
        broker.security_protocol,
    )
    return broker


def broker_log_tail(work_dir: Path) -> str:
    """Return the end of a broker's log, for error messages."""
    return log_tail(work_dir / "broker.log")
