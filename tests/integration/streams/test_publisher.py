"""KafkaPublisher against a broker that is not there."""

from __future__ import annotations

import gc
import socket
import warnings

from aiokafka.errors import KafkaConnectionError

from streams.runtime.publisher import KafkaPublisher
from topics.kafka import KafkaClients


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_producer_whose_start_failed_is_closed_not_leaked() -> None:
    publisher = KafkaPublisher(KafkaClients(f"127.0.0.1:{closed_port()}", client_id="t"))
    failed = False
    try:
        await publisher.start()
    except KafkaConnectionError:
        failed = True  # no reference to the traceback is kept: the producer can be collected
    assert failed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if "Unclosed" in str(w.message)] == []
