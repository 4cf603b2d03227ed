"""What a CPU pool worker loads: the parser, not the service's network clients."""

from __future__ import annotations

import subprocess
import sys

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
