"""A single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) from Maven jars.

Maven resolves the broker classpath from ``resources/kafka-pom.xml`` into a cache outside the
work tree, so only the first start needs the network. The broker gets a fresh storage directory,
free loopback ports and settings sized for a 2-core machine.
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from devstack.maven import resolve_once
from devstack.processes import (
    free_port,
    log_tail,
    run_checked,
    spawn,
    stop_group,
    wait_for,
)

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
STARTED_LINE = "Kafka Server started"
_MAIN_CLASS = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"

_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{broker_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data_dir}
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
    """A running broker; ``stop()`` shuts it down and removes its storage."""

    bootstrap: str
    pid: int
    work_dir: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a grace period)."""
        stop_group(self.pid, grace=15.0)
        if self.process is not None:
            self.process.wait(timeout=5)


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
) -> KafkaBroker:
    """Format fresh storage and start a broker on free 127.0.0.1 ports; wait until ready.

    Args:
        cache_dir: where the Maven-resolved jars are kept between runs.
        work_dir: scratch folder for config, storage and log; created if missing.
        die_with_parent: have the kernel stop the broker when this process dies (test sessions).
        heap: JVM heap, small by default for a 2-core machine.
        timeout: seconds to wait for the "Kafka Server started" line.
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
    config.write_text(
        _SERVER_PROPERTIES.format(
            broker_port=broker_port, controller_port=controller_port, data_dir=data_dir
        )
    )
    jvm = _jvm_args(libs, log_config, heap)
    run_checked(
        [*jvm, _STORAGE_TOOL, "format", "-t", _cluster_id(), "-c", str(config)],
        what="formatting Kafka storage",
    )
    log_path = work_dir / "broker.log"
    log_path.write_text("")
    process = spawn(
        [*jvm, _MAIN_CLASS, str(config)], log_path=log_path, die_with_parent=die_with_parent
    )
    broker = KafkaBroker(f"127.0.0.1:{broker_port}", process.pid, work_dir, process)
    try:
        wait_for(
            lambda: STARTED_LINE in log_path.read_text(errors="replace"),
            timeout=timeout,
            what="Kafka broker",
            process=process,
            log_path=log_path,
        )
    except BaseException:
        broker.stop()
        raise
    log.info("kafka started bootstrap=%s pid=%s", broker.bootstrap, process.pid)
    return broker


def broker_log_tail(work_dir: Path) -> str:
    """Return the end of a broker's log, for error messages."""
    return log_tail(work_dir / "broker.log")
