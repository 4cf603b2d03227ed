"""The faust App factory: one App per consumer group, configured for at-least-once safety.

Only the App lives here; agents are made in ``streams/runtime/worker.py``. Names are never
derived by faust: the app id is the consumer group named in the topic catalogue, and no
``version=`` is set.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import faust
from faust.tables import TableManager
from faust.types import TransportT

from streams.runtime.consumer import DeliveringTransport
from topics.kafka import KafkaClients


class _App(faust.App):
    def _new_transport(self) -> TransportT:
        # faust would pick its aiokafka transport by the broker URL's scheme (kafka://); this
        # one delivers records without a task each (see streams.runtime.consumer).
        return DeliveringTransport(self.conf.broker_consumer, self)

    async def on_first_start(self) -> None:
        # faust's only first-start step makes ``<app_id>-data/`` in the working directory for
        # table stores; with no tables it is litter, one folder per consumer group and run.
        return None


class _TableManager(TableManager):
    """faust's table manager without its one-second wait for tables declared late."""

    async def on_start(self) -> None:
        # faust sleeps a second here so that tables declared after start-up still register
        # before the consumer subscribes. inboxflow declares no table (store memory://), and
        # that second was half of a worker's time to its first output. The rest is faust's.
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def create_app(
    app_id: str,
    *,
    kafka: KafkaClients,
    commit_interval: float = 1.0,
    session_timeout: float = 30.0,
    fetch_bytes: int = 1024 * 1024,
    poll_records: int = 500,
    buffer_events: int = 4096,
    **overrides: Any,
) -> faust.App:
    """Return a faust App for one consumer group.

    Args:
        app_id: the consumer group (``inboxflow-<agent>``); also faust's prefix for internal names.
        kafka: the cluster's client settings, its security included.
        commit_interval: seconds between offset commits; the duplicate window after a crash.
        session_timeout: how long a crashed member keeps its partitions before they move.
        fetch_bytes: bytes fetched per partition at a time (aiokafka ``max_partition_fetch_bytes``;
            a larger record still arrives whole).
        poll_records: records one poll hands to faust (short polls keep heartbeats alive,
            robinhood#402).
        buffer_events: events faust buffers ahead of the agent; it counts events, not bytes,
            so ``streams.runtime.worker.plan_buffers`` sizes it from the largest record.
        overrides: other faust settings, for tests and tuning.
    """
    settings: dict[str, Any] = {
        # The brokers and the transport security (TLS, SASL) every other client uses too.
        **kafka.faust_settings(),
        # Consumer progress lives in Kafka; no tables, so no changelog recovery (faust bug #176).
        "store": "memory://",
        "topic_allow_declare": False,  # the catalogue creates topics, never faust
        "topic_disable_leader": True,
        "web_enabled": False,
        "broker_commit_interval": commit_interval,
        "broker_commit_every": 1000,
        "broker_max_poll_records": poll_records,
        "consumer_max_fetch_size": fetch_bytes,
        "stream_buffer_maxsize": buffer_events,
        "producer_linger": 0.005,
        "producer_acks": -1,
        "consumer_auto_offset_reset": "earliest",
        "stream_processing_timeout": timedelta(minutes=6).total_seconds(),
        "broker_session_timeout": session_timeout,
        "broker_heartbeat_interval": min(3.0, session_timeout / 3),
        "TableManager": _TableManager,
    }
    settings.update(overrides)
    return _App(app_id, **settings)
