"""The stack from the command line, as a user runs it: no process survives its owner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from devstack.processes import pid_alive
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def inboxflow(
    *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "inboxflow", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(tmp_path: Path) -> dict[str, str]:
    cache = Path(os.environ.get("INBOXFLOW_TEST_CACHE", "~/.cache/inboxflow")).expanduser()
    # Own state dir (state file) but the shared jar cache, so no second Maven resolution.
    state = tmp_path / "state"
    state.mkdir()
    (state / "kafka-4.1.1").symlink_to(cache / "kafka-4.1.1")
    return {**os.environ, "INBOXFLOW_STATE_DIR": str(state)}


def test_dev_up_json_then_down_leaves_no_process(tmp_path: Path) -> None:
    env = cli_env(tmp_path)
    up = inboxflow("dev", "up", "--json", env=env)
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    assert state["kafka_bootstrap"].startswith("127.0.0.1:")
    assert state["database_url"].startswith("postgresql://")
    pids = [state["kafka_pid"], state["postgres_pid"]]
    try:
        assert all(pid_alive(pid) for pid in pids)
        status = inboxflow("dev", "status", "--json", env=env)
        assert json.loads(status.stdout)["kafka_running"] is True
    finally:
        down = inboxflow("dev", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert "Stopped kafka and postgres." in down.stdout
    assert not any(pid_alive(pid) for pid in pids)
    assert not Path(state["work_dir"]).exists()
    assert not Path(state["postgres_dir"]).exists()


def test_run_processes_every_message_and_prints_a_summary(tmp_path: Path) -> None:
    result = inboxflow(
        "run", "--users", "2", "--messages", "15", "--json", env=cli_env(tmp_path), timeout=400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["complete"] is True
    discovered = summary["records_per_stage"]["discovered"]
    assert 0 < discovered <= summary["mailbox_messages"] == 30
    for stage in ("fetched", "normalized", "embedded"):
        assert summary["records_per_stage"][stage] == discovered
    assert summary["jobs_by_status"] == {"done": 2 + 4 * discovered}
    assert set(summary["dlq_records"].values()) == {0}
    assert summary["gmail_units"] >= 20 * discovered  # messages.get costs 20 units (2026)


def test_kill_9_of_the_owner_takes_the_stack_down(tmp_path: Path) -> None:
    script = (
        "import json, sys, pathlib\n"
        "from devstack.stack import start_stack\n"
        "s = start_stack(kafka_bootstrap=None, database_url=None, mode='local',\n"
        "    cache_dir=pathlib.Path(sys.argv[1]), die_with_parent=True)\n"
        "print(json.dumps(s.state()), flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = cli_env(tmp_path)
    with subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", script, env["INBOXFLOW_STATE_DIR"]],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as owner:
        assert owner.stdout is not None
        state = json.loads(owner.stdout.readline())
        pids = [state["kafka_pid"], state["postgres_pid"]]
        assert all(pid_alive(pid) for pid in pids)

        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)

    wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=60, message="stack gone")
    # The owner died before its own cleanup; remove the folders it left.
    for folder in (state["work_dir"], state["postgres_dir"]):
        shutil.rmtree(folder, ignore_errors=True)
