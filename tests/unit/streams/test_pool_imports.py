"""What a CPU pool worker loads: the parser, not the service's network clients or its CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from inboxflow.wiring import CPU_POOL_PRELOAD
from streams.runtime.cpu_pool import CpuPool
from streams.stages.mime import RawMessage, normalized_bodies
from tests.unit.streams.test_stages import fetched


def test_a_pool_worker_loads_no_http_database_or_kafka_client_nor_pydantic() -> None:
    # Each pool worker is a fresh interpreter per core: every library it imports is held once
    # per core. Classifying errors must not pull these in (schemas.errors looks them up lazily),
    # and the parse writes Avro bodies without the models.
    imports = "; ".join(
        f"import {module}" for module in [*CPU_POOL_PRELOAD, "streams.runtime.cpu_pool"]
    )
    unwanted = ("aiohttp", "psycopg", "aiokafka", "faust", "pydantic", "schemas.models")
    loaded = f"sorted(m for m in {unwanted!r} if m in sys.modules)"
    probe = f"import sys; print({loaded})"
    found = subprocess.run(  # noqa: S603 - this interpreter and a fixed snippet
        [sys.executable, "-c", f"{imports}; {probe}"], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]"


def test_a_pool_worker_does_not_rerun_the_script_that_started_it(tmp_path: Path) -> None:
    # The `inboxflow` console script is a file that imports the whole command line; a spawned
    # child imports its parent's main script unless told otherwise (12 MiB more per worker).
    script = tmp_path / "console_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio
            import inboxflow.cli
            from streams.runtime.cpu_pool import CpuPool

            LOADED = "__import__('sys').modules"
            PROBE = f"sorted(m for m in ('inboxflow.cli', 'click') if m in {LOADED})"

            async def main() -> None:
                pool = CpuPool(1, preload=["streams.stages.mime"])
                try:
                    print(await pool.run(eval, PROBE))
                finally:
                    pool.shutdown()

            if __name__ == "__main__":
                asyncio.run(main())
            """
        )
    )
    found = subprocess.run(  # noqa: S603 - this interpreter and our own script
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=120
    )
    assert found.stdout.strip() == "[]"


POOL_SCRIPT = """
import os, sys, time
from pathlib import Path
from streams.runtime.cpu_pool import CpuPool

def children(pid):
    return sorted(
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid)
    )

pool = CpuPool(2, preload=["streams.stages.mime"])
pool.start()
mine = children(os.getpid())
print((pool.pids(), mine, [children(pid) for pid in mine]), flush=True)
time.sleep(600)
"""


def test_a_pool_starts_its_fork_server_and_workers_only_and_they_leave_with_it() -> None:
    # No resource tracker beside them (multiprocessing starts one: 13 MiB); the workers are
    # children of the fork server, and when the pool's process is killed outright the server
    # and every worker read the end of their sockets and exit.
    parent = subprocess.Popen(  # noqa: S603 - this interpreter and a fixed snippet
        [sys.executable, "-c", POOL_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        printed = parent.stdout.readline()
        workers, children, grandchildren = eval(printed)  # noqa: S307 - lists we printed
    finally:
        parent.kill()
        parent.wait(timeout=30)
        if parent.stdout is not None:
            parent.stdout.close()
    assert len(workers) == 2
    assert len(children) == 1  # the fork server
    assert grandchildren == [workers]
    deadline = time.monotonic() + 60
    while any(map(running, [*children, *workers])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(running, [*children, *workers]))


def running(pid: int) -> bool:
    """Return True while ``pid`` runs (an exited orphan may stay a zombie until init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


async def test_a_worker_normalizes_mail_without_loading_pydantic() -> None:
    pool = CpuPool(1, name="test-imports", preload=CPU_POOL_PRELOAD)
    try:
        message = RawMessage.of(fetched("03-mixed-attachments.eml", "m1"))
        [body] = await pool.run(normalized_bodies, [(message, None)], datetime.now(UTC))
        assert isinstance(body, bytes)
        probe = (
            "sorted(m for m in ('pydantic', 'schemas.models') if m in __import__('sys').modules)"
        )
        assert await pool.run(eval, probe) == []
    finally:
        await pool.aclose()
