"""Every consumer inboxflow makes re-checks for work every FETCHER_RECHECK_MS when idle, not 200 ms.

aiokafka hands ``consumer_timeout_ms`` to its background fetcher only when the consumer starts,
and faust's consumer gets it through a private attribute: so both are started here on a real
broker and the fetcher they built is asked what it was given.
"""

from __future__ import annotations

from collections.abc import Callable

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.runtime.app import create_app
from topics.kafka import FETCHER_RECHECK_MS, KafkaClients

RECHECK_SECONDS = FETCHER_RECHECK_MS / 1000


async def test_a_consumer_from_kafka_clients_gives_its_fetcher_the_recheck(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    consumer = KafkaClients(kafka_bootstrap).consumer(group_id=unique_name("group"))
    await consumer.start()
    try:
        assert consumer._fetcher._fetcher_timeout == RECHECK_SECONDS
    finally:
        await consumer.stop()


async def test_the_consumer_faust_builds_gives_its_fetcher_the_recheck(
    kafka_bootstrap: str, unique_name: Callable[..., str]
) -> None:
    app: faust.App = create_app(unique_name("app"), kafka=KafkaClients(kafka_bootstrap))
    thread = app.consumer._thread
    assert isinstance(thread, faust_aiokafka.AIOKafkaConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        assert consumer._fetcher._fetcher_timeout == RECHECK_SECONDS != 0.2  # aiokafka's default
    finally:
        await consumer.stop()
        thread.thread_loop.close()
