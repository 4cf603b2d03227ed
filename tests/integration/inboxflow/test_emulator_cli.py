"""``inboxflow emulator gmail`` as a subprocess: serves a generated mailbox for ``me``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers import wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def emulator_process() -> Iterator[str]:
    port = _free_port()
    entry = "from inboxflow.cli import main; main()"
    command = [sys.executable, "-c", entry, "emulator", "gmail", "--port", str(port)]
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(30)


def _profile(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"{url}gmail/v1/users/me/profile", timeout=2) as response:  # noqa: S310
            return json.loads(response.read())  # type: ignore[no-any-return]
    except OSError:
        return None


def test_default_mailbox_for_me(emulator_process: str) -> None:
    profile = wait_until(lambda: _profile(emulator_process), timeout=60, message="emulator up")
    assert profile["emailAddress"] == "me@inboxflow.test"
    assert profile["messagesTotal"] == 200
