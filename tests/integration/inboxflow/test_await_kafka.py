"""A worker started while Kafka is away waits for it instead of exiting (and says so, once)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from devstack.processes import free_port
from devstack.stack import Stack
from inboxflow.supervisor import START_WAIT_GRACE, await_kafka
from topics.kafka import KafkaClients


async def test_a_reachable_cluster_is_passed_at_once(stack: Stack) -> None:
    async with asyncio.timeout(30):
        await await_kafka(KafkaClients(stack.kafka_bootstrap))


async def test_an_unreachable_cluster_is_waited_for_and_announced_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens here
    # A clock past the grace after its first reading, and then still: one announcement, and
    # no reminder (those come a minute apart).
    readings = iter([0.0])

    def clock() -> float:
        return next(readings, START_WAIT_GRACE + 1)

    with (
        caplog.at_level(logging.WARNING, logger="inboxflow.supervisor"),
        pytest.raises(TimeoutError),
    ):
        async with asyncio.timeout(3):
            await await_kafka(KafkaClients(f"127.0.0.1:{port}"), clock=clock)
    waiting = [r for r in caplog.records if "waiting for Kafka" in r.getMessage()]
    assert len(waiting) == 1
    assert f"127.0.0.1:{port}" in waiting[0].getMessage()


async def test_the_wait_ends_when_the_cluster_answers(stack: Stack) -> None:
    """A bootstrap list whose first server is dead still gets through to the live one."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    kafka = KafkaClients(f"127.0.0.1:{dead},{stack.kafka_bootstrap}")
    async with asyncio.timeout(30):
        await await_kafka(kafka)
