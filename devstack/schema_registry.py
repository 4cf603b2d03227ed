"""A real Confluent-compatible schema registry for the local stack: Apicurio Registry.

Apicurio Registry serves the Confluent schema registry REST API (``/subjects/{s}/versions``,
``/schemas/ids/{id}``, Confluent's ``{"error_code", "message"}`` errors) under
``/apis/ccompat/v7``; ``SchemaRegistry.url`` already ends with that path, so it is what
``INBOXFLOW_SCHEMA_REGISTRY_URL`` takes. Maven resolves the registry's distribution from
``resources/schema-registry-pom.xml`` into a cache outside the work tree (only the first start
needs the network, ``inboxflow dev fetch`` does it ahead). Storage is in memory: a stopped
registry forgets every schema, which is what tests want.

Must not read the environment or import anything outside ``devstack``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.maven import resolve_once
from devstack.processes import (
    StackError,
    free_port,
    spawn,
    stop_group,
    wait_for,
)

log = logging.getLogger(__name__)

APICURIO_VERSION = "2.6.13.Final"
CONFLUENT_API_PATH = "/apis/ccompat/v7"


def ensure_distribution(cache_dir: Path, version: str = APICURIO_VERSION) -> Path:
    """Return the registry's runner jar, unpacking the distribution with Maven on first use.

    Raises:
        StackError: no ``java``/``mvn`` on PATH, or Maven could not resolve the distribution.
    """
    home = cache_dir / f"apicurio-registry-{version}"
    runner = home / f"apicurio-registry-app-{version}-runner.jar"
    if not runner.exists():
        (home / ".complete").unlink(missing_ok=True)  # a marker without the jar: resolve again
    resolve_once(
        home,
        "schema-registry-pom.xml",
        "dependency:unpack",
        [f"apicurio.version={version}", f"registry.dir={home}"],
        f"the Apicurio Registry {version} distribution",
    )
    if not runner.exists():
        shutil.rmtree(home, ignore_errors=True)
        raise StackError(f"the Apicurio Registry {version} distribution has no {runner.name}")
    return runner


@dataclass
class SchemaRegistry:
    """A running registry; ``stop()`` shuts it down (its schemas are gone with it)."""

    url: str  # base URL of the Confluent-compatible API, e.g. http://127.0.0.1:8081/apis/ccompat/v7
    pid: int
    work_dir: Path
    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """Stop the registry (SIGTERM, then SIGKILL after a grace period)."""
        stop_group(self.pid, grace=15.0)
        if self.process is not None:
            self.process.wait(timeout=5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=1.0) as response:  # noqa: S310 - our http URL
            return int(response.status) == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def start_schema_registry(
    *,
    cache_dir: Path,
    work_dir: Path,
    die_with_parent: bool,
    heap: str = "256m",
    timeout: float = 90.0,
) -> SchemaRegistry:
    """Start a registry on a free 127.0.0.1 port; wait until its Confluent API answers.

    A port another process took between choosing and binding it is retried on a new one.

    Args:
        cache_dir: where the Maven-resolved distribution is kept between runs.
        work_dir: scratch folder for the log; created if missing.
        die_with_parent: have the kernel stop the registry when this process dies (tests).
        heap: JVM heap, small by default for a 2-core machine.
        timeout: seconds to wait for ``GET /subjects`` to answer 200 (it takes 3-6 s).

    Raises:
        StackError: the distribution cannot be fetched, or the registry exits or stays silent.
    """
    runner = ensure_distribution(cache_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        try:
            return _start(runner, work_dir, die_with_parent, heap, timeout)
        except _PortTakenError as exc:
            if attempt == _PORT_ATTEMPTS:
                raise StackError(str(exc)) from exc
            log.warning("schema registry port taken, retrying with another: %s", exc)
    raise AssertionError("unreachable")  # pragma: no cover


_PORT_ATTEMPTS = 3
_PORT_TAKEN = "seems to be in use by another process"  # Quarkus's words


class _PortTakenError(StackError):
    """The chosen port was taken before the registry bound it."""


def _start(
    runner: Path, work_dir: Path, die_with_parent: bool, heap: str, timeout: float
) -> SchemaRegistry:
    port = free_port()
    log_path = work_dir / "schema-registry.log"
    log_path.write_text("")
    argv = [
        "java",
        f"-Xmx{heap}",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # fastest start; the local stack is not for throughput
        "-Xshare:auto",
        "-Djava.awt.headless=true",
        "-Dquarkus.http.host=127.0.0.1",
        f"-Dquarkus.http.port={port}",
        "-Dquarkus.http.access-log.enabled=false",
        "-jar",
        str(runner),
    ]
    process = spawn(argv, log_path=log_path, die_with_parent=die_with_parent)
    registry = SchemaRegistry(
        f"http://127.0.0.1:{port}{CONFLUENT_API_PATH}", process.pid, work_dir, process
    )
    try:
        wait_for(
            lambda: _answers(registry.url),
            timeout=timeout,
            what="schema registry",
            process=process,
            log_path=log_path,
        )
    except StackError as exc:
        registry.stop()
        if _PORT_TAKEN in log_path.read_text(errors="replace"):
            raise _PortTakenError(f"port {port}: {exc}") from exc
        raise
    except BaseException:
        registry.stop()
        raise
    log.info("schema registry started url=%s pid=%s", registry.url, process.pid)
    return registry
