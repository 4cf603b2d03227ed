"""``inboxflow worker`` forks every group, sink and source from itself.

The children share the pages the supervisor imported (anonymous memory shared with it, which a
new interpreter never has), each runs in a session of its own under its own name and serves its
health endpoint; a child killed outright stops the supervisor and every other child with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from devstack.processes import free_port_block, pid_alive
from devstack.stack import Stack
from inboxflow.supervisor import SINKS, SOURCES
from inboxflow.wiring import AGENTS, catalogue_from, kafka_from
from tests.helpers import wait_until
from tests.integration.inboxflow.test_worker_health import http_get
from tests.pipeline_support import stack_settings
from topics.admin import ensure_topics

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")
NAMES = [*(f"agent-{a}" for a in AGENTS), *(f"sink-{s}" for s in SINKS), *SOURCES]
SHARED_MIB = 10  # anonymous memory a forked agent still shares with the supervisor, at least


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def shared_dirty_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Shared_Dirty:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no Shared_Dirty for {pid}")


def in_sessions(sessions: set[int]) -> list[int]:
    """Return every live process whose session is one of ``sessions`` (children, pools)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) in sessions:
                    found.append(int(entry.name))
            except ProcessLookupError:
                continue
    return found


def test_worker_forks_children_that_share_its_pages_and_stop_with_it(
    stack: Stack, database_url: str, tmp_path: Path
) -> None:
    namespace = f"forks-{uuid.uuid4().hex[:8]}"
    settings = stack_settings(stack, topic_namespace=namespace, topic_partitions=2)
    asyncio.run(ensure_topics(kafka_from(settings), catalogue_from(settings).topics))
    port = free_port_block(len(NAMES))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INBOXFLOW_")},
        **stack.client_env(),
        "DATABASE_URL": database_url,
        "INBOXFLOW_TOPIC_NAMESPACE": namespace,
        "INBOXFLOW_TOPIC_PARTITIONS": "2",
        "INBOXFLOW_METRICS_PORT": str(port),
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        supervisor = subprocess.Popen(  # noqa: S603 - our own command
            [INBOXFLOW, "-v", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    sessions: set[int] = set()
    try:
        pids = wait_until(
            lambda: (found := children(supervisor.pid)) and len(found) == len(NAMES) and found,
            timeout=120,
            interval=0.2,
            message=f"{len(NAMES)} children of the supervisor",
        )
        sessions = set(pids)
        by_name = {process_name(pid): pid for pid in pids}
        assert sorted(by_name) == sorted(name[:15] for name in NAMES)
        assert all(os.getsid(pid) == pid for pid in pids)  # each leads a session of its own

        def every_child_serves_health() -> bool:
            assert supervisor.poll() is None, log.read_text()
            return all(
                http_get(f"http://127.0.0.1:{port + i}/healthz")[0] == 200
                for i in range(len(NAMES))
            )

        wait_until(every_child_serves_health, timeout=180, interval=0.5, message="every /healthz")
        text = log.read_text()
        for name in NAMES:
            assert f"started {name} pid={by_name[name[:15]]} (forked)" in text
        for agent in AGENTS:
            pid = by_name[f"agent-{agent}"[:15]]
            assert shared_dirty_mib(pid) > SHARED_MIB, f"agent-{agent} shares too little"

        os.kill(by_name["agent-extract"], signal.SIGKILL)
        assert supervisor.wait(timeout=120) == 1
        assert "worker processes exited: {'agent-extract': -9}" in log.read_text()
        wait_until(
            lambda: not in_sessions(sessions),
            timeout=30,
            message="every child and its pool gone with the supervisor",
        )
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        for pid in in_sessions(sessions):
            if pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
