"""``dev up --secure`` as a user runs it: SASL_SSL Kafka and TLS Postgres, checked and refused.

The settings come from the file ``dev up`` writes (``set -a; . client.env``), as documented;
a worker with a wrong password stops at once with one line naming the setting to fix.
"""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.processes import pid_alive
from tests.e2e.test_devstack_cli import ROOT, cli_env, inboxflow

pytestmark = pytest.mark.timeout(600)

REFUSAL_SECONDS = 60.0  # a refusal is an answer, not a retry loop (busy 2-core machine)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the NAME='value' lines ``dev up`` writes."""
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        [env[name]] = shlex.split(value)
    return env


def sourced(command: str, env_file: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a shell that sourced ``env_file`` first, as the docs tell users to."""
    script = f"set -a; . {shlex.quote(str(env_file))}; set +a; {command}"
    return subprocess.run(  # noqa: S603
        ["/bin/sh", "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_dev_up_secure_then_check_over_tls_and_refusals(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    up = inboxflow("dev", "up", "--secure", "--json", env=env)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    pids = [state["kafka_pid"], state["postgres_pid"]]
    try:
        assert state["secure"] is True
        assert state["kafka_bootstrap"].startswith("127.0.0.1:")
        assert state["kafka_security_protocol"] == "SASL_SSL"
        assert state["kafka_sasl_mechanism"] == "SCRAM-SHA-512"
        assert state["kafka_sasl_username"] == "inboxflow"
        assert Path(state["kafka_ssl_cafile"]).read_text().startswith("-----BEGIN CERTIFICATE")
        env_file = Path(state["client_env"])
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        client = read_env_file(env_file)
        assert client["INBOXFLOW_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert client["INBOXFLOW_KAFKA_SSL_CAFILE"] == state["kafka_ssl_cafile"]
        assert "sslmode=verify-full" in client["DATABASE_URL"]
        # Passwords live in the owner-only file, never in what `dev up` prints.
        assert client["INBOXFLOW_KAFKA_SASL_PASSWORD"] not in up.stdout
        assert ":***@" in state["database_url"]

        check = sourced(f"{shlex.quote(sys.executable)} -m inboxflow dev check", env_file, env)
        assert check.returncode == 0, check.stderr
        assert "Kafka round-trip OK" in check.stdout
        assert "Postgres round-trip OK" in check.stdout

        status = inboxflow("dev", "status", "--json", env=env)
        assert json.loads(status.stdout)["kafka_running"] is True
        assert client["INBOXFLOW_KAFKA_SASL_PASSWORD"] not in status.stdout

        wrong = {**env, **client, "INBOXFLOW_KAFKA_SASL_PASSWORD": "not-the-password"}
        refused = inboxflow("dev", "check", env=wrong, timeout=REFUSAL_SECONDS)
        assert refused.returncode == 1
        assert error_lines(refused.stderr) == [
            "Error: Kafka authentication failed for user 'inboxflow' (SCRAM-SHA-512) at "
            f"{state['kafka_bootstrap']}: check INBOXFLOW_KAFKA_SASL_PASSWORD (and "
            "INBOXFLOW_KAFKA_SASL_USERNAME, INBOXFLOW_KAFKA_SASL_MECHANISM)"
        ]

        started = time.monotonic()
        worker = inboxflow("worker", "--agent", "normalize", env=wrong, timeout=REFUSAL_SECONDS)
        assert worker.returncode == 1, worker.stderr
        assert error_lines(worker.stderr) == error_lines(refused.stderr)
        assert time.monotonic() - started < REFUSAL_SECONDS

        bare = {k: v for k, v in client.items() if not k.startswith("INBOXFLOW_KAFKA_")}
        no_credentials = inboxflow("dev", "check", env={**env, **bare}, timeout=REFUSAL_SECONDS)
        assert no_credentials.returncode == 1
        assert "Traceback" not in no_credentials.stderr
        assert error_lines(no_credentials.stderr)[-1].startswith("Error: Kafka at ")
    finally:
        down = inboxflow("dev", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert "Stopped kafka and postgres." in down.stdout
    assert not any(pid_alive(pid) for pid in pids)
    assert not Path(state["work_dir"]).exists()
    assert not Path(state["client_env"]).exists()
