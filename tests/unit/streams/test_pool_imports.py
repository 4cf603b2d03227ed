"""What a CPU pool worker loads: the parser, not the service's network clients or its CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from inboxflow.wiring import CPU_POOL_PRELOAD


def test_a_pool_worker_loads_no_http_database_or_kafka_client() -> None:
    # Each pool worker is a fresh interpreter per core: every library it imports is held once
    # per core. Classifying errors must not pull these in (schemas.errors looks them up lazily).
    imports = "; ".join(f"import {module}" for module in CPU_POOL_PRELOAD)
    loaded = "sorted(m for m in ('aiohttp', 'psycopg', 'aiokafka', 'faust') if m in sys.modules)"
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
