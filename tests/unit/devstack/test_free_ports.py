"""Ports the local stack listens on are picked where outgoing connections never land."""

from __future__ import annotations

import socket
import sys

import pytest

from devstack import processes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/sys/net")
def test_a_free_port_lies_below_the_range_outgoing_connections_take() -> None:
    ephemeral = processes._ephemeral_ports_start()
    assert ephemeral is not None
    ports = {processes.free_port() for _ in range(20)}
    assert all(1024 <= port < ephemeral for port in ports)
    assert len(ports) > 1  # spread out, not one port for everybody


def test_a_free_port_and_a_block_of_them_can_be_bound() -> None:
    base = processes.free_port_block(5)
    for port in (processes.free_port(), *range(base, base + 5)):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
