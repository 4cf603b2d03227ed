"""The composition root: everything a process runs is built here from ``Settings``, once.

Open this module first to see how the parts fit: the topic catalogue, the Kafka clients, the
serde, the Gmail client and the embedding provider are made from the settings, then each
consumer group's stages, then its faust worker. Consumer group ``sync`` runs two stages (listing
and fetching, so one process owns a user's Gmail quota); every other group runs one.
``build_stages`` maps each source topic to its stage.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import faust

from inboxflow.kafka_clients import kafka_from as kafka_from
from inboxflow.settings import Settings
from schemas.models import SyncRequested
from schemas.serde import Serde, serde_for
from streams.runtime.cpu_pool import CpuPool
from streams.runtime.liveness import StallTracker
from streams.runtime.publisher import KafkaPublisher
from streams.runtime.stage import Stage
from streams.runtime.worker import BatchConfig, build_worker_app, largest_record_bytes
from streams.stages.base import event_record
from streams.stages.gmail.limiter import QuotaLimiter
from topics.catalogue import Catalogue, TopicSpec, build_catalogue

# A group's stages and clients are imported where they are built: the Gmail side (Google's
# client library, its auth and the token cipher, some 15 MiB) only for the sync group and the
# account tools, Postgres (psycopg and libpq, about 8 MiB) only for the groups that keep state
# there, the embedding client only for embed. Every other worker process would hold them for
# nothing.
if TYPE_CHECKING:
    from google.auth.credentials import Credentials

    from db.agent_state import AgentState
    from db.token_cipher import KeyRing
    from streams.stages.chunk_vectors import PostgresChunkVectors
    from streams.stages.embedding import EmbeddingProvider
    from streams.stages.gmail.client import GmailClient
    from streams.stages.gmail.credentials import CredentialsProvider

AGENTS = ("sync", "normalize", "extract", "embed", "insight")
POSTGRES_AGENTS = frozenset({"sync", "embed", "insight"})  # keep state there (Resources)
# Records an agent takes at once unless INBOXFLOW_BATCH_SIZE says. Agents whose work is local
# CPU take many: a batch pays Kafka's acknowledgement round trip and the CPU pool's hand-overs
# once (the normalize agent: 1,518 -> 2,271 messages/s and a seventh less CPU per message from
# 100 to 500). The others call Gmail or a model API, and their batch is the unit of concurrency
# against its rate limits.
LOCAL_WORK_BATCH_SIZE = 500
REMOTE_WORK_BATCH_SIZE = 100
_LOCAL_WORK_AGENTS = frozenset({"normalize", "extract"})
# Their records are independent of each other (pure functions, no state), so two batches are at
# work at once: the next is parsed while the last one's results are published (BatchConfig).
LOCAL_WORK_IN_FLIGHT = 2
BACKFILL_LANE = "backfill"
"""The Gmail client lane of backfill fetches (``INBOXFLOW_BACKFILL_QUOTA_SHARE`` of each user)."""


def catalogue_from(settings: Settings, *, namespace: str | None = None) -> Catalogue:
    """Return the topic catalogue the settings describe (``namespace`` overrides theirs)."""
    return build_catalogue(
        namespace or settings.topic_namespace,
        partitions=settings.topic_partitions,
        replication=settings.topic_replication,
        retry_ladders=settings.retry_ladders,
    )


def serde_from(settings: Settings) -> Serde:
    """Return the wire format of every event this deployment produces and consumes.

    Confluent framing through the schema registry when ``schema_registry_url`` is set (its
    readers also take single-object frames, so a topic can switch over without a flag day),
    else Avro single-object encoding. Agents, job states, sinks, tools and benches all take
    theirs from here: a producer and a consumer that disagree would dead-letter every record.
    """
    return serde_for(settings.schema_registry_url)


def token_keys_from(settings: Settings) -> KeyRing:
    """Return the keys that encrypt Gmail tokens in Postgres: INBOXFLOW_TOKEN_KEY seals and opens,
    INBOXFLOW_TOKEN_PREVIOUS_KEYS (comma-separated) only open, until ``accounts rotate-key``.

    Raises:
        TokenKeyFormatError: a key is not 32 bytes of URL-safe base64 (the value is not shown).
    """
    from db.token_cipher import KeyRing

    current, previous = settings.token_key, settings.token_previous_keys
    return KeyRing.from_text(
        current.get_secret_value() if current is not None else None,
        previous.get_secret_value() if previous is not None else None,
    )


def gmail_credentials_from(settings: Settings) -> CredentialsProvider:
    """Return where each user's Gmail credentials come from: the encrypted rows in Postgres,
    else the token-file folder (``INBOXFLOW_GMAIL_CREDENTIALS_DIR``), else (only when the Gmail
    endpoint is not Google's, i.e. the emulator) anonymous credentials.
    """
    from streams.stages.gmail.credentials import CredentialsProvider

    host = urlsplit(settings.gmail_api_root).hostname or ""
    return CredentialsProvider(
        settings.database_url.get_secret_value(),
        token_keys_from(settings),
        token_dir=settings.gmail_credentials_dir,
        allow_anonymous=not (host == "googleapis.com" or host.endswith(".googleapis.com")),
    )


def gmail_client_from(
    settings: Settings, *, credentials_for: Callable[[str], Credentials] | None = None
) -> GmailClient:
    """Return a Gmail client configured by the settings (the emulator's URL on the local stack).

    Credentials come from ``gmail_credentials_from`` unless ``credentials_for`` is given.
    """
    from streams.stages.gmail.client import GmailClient, GmailClientConfig

    window = settings.gmail_quota_window_seconds
    provider = gmail_credentials_from(settings) if credentials_for is None else None
    return GmailClient(
        GmailClientConfig(
            api_root=settings.gmail_api_root,
            cost_table=settings.gmail_quota_table,
            user_units_per_window=int(settings.gmail_user_units_per_minute * window / 60),
            window_seconds=window,
            credentials_dir=settings.gmail_credentials_dir,
            lane_shares={BACKFILL_LANE: settings.backfill_quota_share},
        ),
        credentials_for=credentials_for or provider,
        forget_credentials=provider.forget if provider is not None else None,
    )


# Embedding work per provider: chunks per call (a message's deadline is checked between calls)
# and calls at once. The local model runs one call per CPU worker, and a call of 8 chunks is
# 2 s of one core; an API is paid per request, so a call is one full request, and 4 of them
# in flight overlap their latency while the provider's token bucket paces them.
LOCAL_EMBED_SUB_BATCH = 8
API_EMBED_SUB_BATCH = 64
API_EMBED_CONCURRENCY = 4
# What CPU workers run (parsing, the local model), imported before a worker takes a call.
CPU_POOL_PRELOAD = ("streams.stages.mime", "streams.stages.embedding_model")


def embedding_provider_from(
    settings: Settings, *, pool: CpuPool | None = None
) -> EmbeddingProvider:
    """Return the configured embedding provider; the local model runs in ``pool``."""
    from streams.stages.embedding import LocalEmbeddingProvider, OpenAIEmbeddingProvider

    if settings.embedding_provider == "openai":
        return OpenAIEmbeddingProvider(
            base_url=settings.embedding_api_url,
            model=settings.embedding_model,
            dimension=settings.embedding_dimension,
            api_key=settings.embedding_api_key.get_secret_value() or None,
            batch_size=API_EMBED_SUB_BATCH,
        )
    return LocalEmbeddingProvider(pool=pool)  # without a pool, one of its own per core


@dataclass
class Resources:
    """Clients a worker's stages share; created lazily so a group builds only what it needs."""

    settings: Settings
    serde: Serde
    _gmail: GmailClient | None = None
    _state: AgentState | None = None
    _embedder: EmbeddingProvider | None = None
    _cpu_pool: CpuPool | None = None
    _backfill_pace: QuotaLimiter | None = None
    _chunk_vectors: PostgresChunkVectors | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Resources:
        """Return resources for these settings."""
        return cls(settings, serde_from(settings))

    @property
    def gmail(self) -> GmailClient:
        """The Gmail client (one limiter per user)."""
        if self._gmail is None:
            self._gmail = gmail_client_from(self.settings)
        return self._gmail

    @property
    def backfill_pace(self) -> QuotaLimiter:
        """Backfill messages this process may fetch, over all users (a bucket of messages)."""
        if self._backfill_pace is None:
            per_second = self.settings.backfill_messages_per_second
            # One second's worth of messages a window: an idle lane bursts at most that much.
            self._backfill_pace = QuotaLimiter(
                units_per_window=max(1, round(per_second)),
                window_seconds=max(1, round(per_second)) / per_second,
                target_utilization=1.0,
                burst_fraction=1.0,
            )
        return self._backfill_pace

    @property
    def state(self) -> AgentState:
        """Agent state in Postgres."""
        from db.agent_state import AgentState

        if self._state is None:
            self._state = AgentState(self.settings.database_url.get_secret_value())
        return self._state

    async def close(self) -> None:
        """Release the clients that were created (thread pools, connections, HTTP sessions)."""
        if self._gmail is not None:
            self._gmail.close()
        if self._state is not None:
            await self._state.close()
        if self._chunk_vectors is not None:
            await self._chunk_vectors.close()
        closer = getattr(self._embedder, "aclose", None)
        if closer is not None:
            await closer()
        if self._cpu_pool is not None:
            await self._cpu_pool.aclose()

    @property
    def chunk_vectors(self) -> PostgresChunkVectors:
        """Vectors of chunks each user's mail already had embedded (Postgres)."""
        from streams.stages.chunk_vectors import PostgresChunkVectors

        if self._chunk_vectors is None:
            self._chunk_vectors = PostgresChunkVectors(
                self.settings.database_url.get_secret_value()
            )
        return self._chunk_vectors

    @property
    def cpu_pool(self) -> CpuPool:
        """Worker processes for CPU-bound work (parsing, the local model): one per core."""
        if self._cpu_pool is None:
            self._cpu_pool = CpuPool(
                self.settings.cpu_workers, name="inboxflow-cpu", preload=CPU_POOL_PRELOAD
            )
        return self._cpu_pool

    @property
    def embedder(self) -> EmbeddingProvider:
        """The embedding provider."""
        if self._embedder is None:
            local = self.settings.embedding_provider == "local"
            pool = self.cpu_pool if local else None
            self._embedder = embedding_provider_from(self.settings, pool=pool)
        return self._embedder


def build_stages(agent: str, catalogue: Catalogue, resources: Resources) -> Mapping[str, Stage]:
    """Return the stages of consumer group ``agent``, keyed by the topic each one reads."""
    settings, serde, timeouts = resources.settings, resources.serde, resources.settings.timeouts
    if agent == "sync":
        from streams.stages.fetch import FetchStage
        from streams.stages.sync import SyncStage

        return {
            catalogue.sync_requested.name: SyncStage(
                serde=serde,
                gmail=resources.gmail,
                state=resources.state,
                requests_topic=catalogue.sync_requested.name,
                discovered_topic=catalogue.message_discovered.name,
                deleted_topic=catalogue.message_deleted.name,
                labels_topic=catalogue.message_labels_changed.name,
                deadline_for=timeouts.sync_for,
            ),
            catalogue.message_discovered.name: FetchStage(
                serde=serde,
                gmail=resources.gmail,
                fetched_topic=catalogue.message_fetched.name,
                timeout=timeouts.normalize,
            ),
            # The backfill lane: the same stages on topics of their own, so live requests and
            # messages never queue behind it, fetching at a capped share of each user's quota
            # (same client: the user's limiter still bounds both lanes together).
            catalogue.backfill_requested.name: SyncStage(
                serde=serde,
                gmail=resources.gmail,
                state=resources.state,
                requests_topic=catalogue.backfill_requested.name,
                discovered_topic=catalogue.backfill_discovered.name,
                deleted_topic=catalogue.message_deleted.name,
                labels_topic=catalogue.message_labels_changed.name,
                deadline_for=timeouts.sync_for,
                name="backfill",
                backfill=True,
            ),
            catalogue.backfill_discovered.name: FetchStage(
                serde=serde,
                gmail=resources.gmail,
                fetched_topic=catalogue.message_fetched.name,
                timeout=timeouts.normalize,
                name="backfill-fetch",
                lane=BACKFILL_LANE,
                pace=resources.backfill_pace,
            ),
        }
    if agent == "normalize":
        from streams.stages.normalize import NormalizeStage

        stage: Stage = NormalizeStage(
            serde=serde,
            normalized_topic=catalogue.email_normalized.name,
            timeout=timeouts.normalize,
            record_timeout=timeouts.normalize_record,
            pool=resources.cpu_pool,
            max_record_bytes=largest_record_bytes(catalogue.email_normalized),
        )
        return {catalogue.message_fetched.name: stage}
    if agent == "extract":
        from streams.stages.extract import ExtractStage

        stage = ExtractStage(
            serde=serde, contacts_topic=catalogue.contact_extracted.name, timeout=timeouts.extract
        )
        return {catalogue.email_normalized.name: stage}
    if agent == "embed":
        from streams.stages.embed import EmbedStage

        local = settings.embedding_provider == "local"
        stage = EmbedStage(
            serde=serde,
            provider=resources.embedder,
            embedded_topic=catalogue.email_embedded.name,
            timeout=timeouts.embed,
            record_timeout=timeouts.embed_record,
            max_chunks=settings.embed_max_chunks,
            sub_batch=LOCAL_EMBED_SUB_BATCH if local else API_EMBED_SUB_BATCH,
            concurrency=resources.cpu_pool.workers if local else API_EMBED_CONCURRENCY,
            vector_store=resources.chunk_vectors,
        )
        return {catalogue.email_normalized.name: stage}
    if agent == "insight":
        from streams.stages.insight import InsightStage

        stage = InsightStage(
            serde=serde,
            state=resources.state,
            insights_topic=catalogue.insight_produced.name,
            timeout=timeouts.insight,
            interval=timedelta(seconds=settings.insight_interval_seconds),
        )
        return {catalogue.email_normalized.name: stage}
    raise ValueError(f"unknown agent {agent!r}; one of {', '.join(AGENTS)}")


def build_worker(
    agent: str, settings: Settings, *, stalls: StallTracker | None = None
) -> faust.App:
    """Return the faust app of consumer group ``agent``: its stages, retry relay and publisher.

    ``stalls`` learns when the agent's records wait and are acked (``/healthz``).
    """
    catalogue = catalogue_from(settings)
    resources = Resources.from_settings(settings)
    group = catalogue.group(agent)
    return build_worker_app(
        catalogue=catalogue,
        group=group,
        stages=build_stages(agent, catalogue, resources),
        kafka=kafka_from(settings, client_id=group.group_id),
        batch=BatchConfig(
            batch_size_for(agent, settings),
            settings.batch_wait,
            in_flight=LOCAL_WORK_IN_FLIGHT if agent in _LOCAL_WORK_AGENTS else 1,
        ),
        session_timeout=settings.session_timeout_seconds,
        on_stop=resources.close,
        serde=resources.serde,
        buffer_bytes=settings.worker_buffer_bytes,
        stalls=stalls,
        topic_batches={
            # Two batches taken at a time: the lane is paced, and a rebalance or a stop waits
            # until every taken record is acked.
            catalogue.backfill_discovered.name: BatchConfig(
                settings.backfill_batch_size, settings.batch_wait, window_batches=2
            )
        },
    )


def batch_size_for(agent: str, settings: Settings) -> int:
    """Return how many records consumer group ``agent`` takes at once."""
    if settings.batch_size is not None:
        return settings.batch_size
    return LOCAL_WORK_BATCH_SIZE if agent in _LOCAL_WORK_AGENTS else REMOTE_WORK_BATCH_SIZE


async def request_syncs(
    settings: Settings,
    users: list[str],
    *,
    full: bool,
    label_ids: Sequence[str] = (),
    reemit: bool = False,
) -> list[str]:
    """Produce one SyncRequested per user and wait until Kafka has them; return the sync ids.

    ``label_ids`` (a full sync of just those labels) and ``reemit`` (emit known ids again)
    imply a full sync.
    """
    full = full or bool(label_ids) or reemit
    now = datetime.now(UTC)
    requests = [
        SyncRequested(
            user_id=user,
            sync_id=uuid.uuid4().hex,
            full=full,
            label_ids=list(label_ids),
            reemit=reemit,
            requested_at=now,
        )
        for user in users
    ]
    await _publish_requests(settings, lambda catalogue: catalogue.sync_requested, requests)
    return [request.sync_id for request in requests]


async def request_backfills(
    settings: Settings, users: list[str], *, reemit: bool = False
) -> list[str]:
    """Produce one backfill (a full listing on the backfill lane) per user; return the sync ids.

    Waits until Kafka has the requests. ``reemit`` fetches ids discovered before again too.
    """
    now = datetime.now(UTC)
    requests = [
        SyncRequested(
            user_id=user,
            sync_id=f"backfill-{uuid.uuid4().hex}",
            full=True,
            reason="backfill",
            reemit=reemit,
            requested_at=now,
        )
        for user in users
    ]
    await _publish_requests(settings, lambda catalogue: catalogue.backfill_requested, requests)
    return [request.sync_id for request in requests]


async def _publish_requests(
    settings: Settings,
    topic_of: Callable[[Catalogue], TopicSpec],
    requests: list[SyncRequested],
) -> None:
    topic = topic_of(catalogue_from(settings)).name
    serde = serde_from(settings)
    publisher = KafkaPublisher(kafka_from(settings, client_id="inboxflow-cli"))
    try:
        await publisher.publish([event_record(serde, topic, request) for request in requests])
    finally:
        await publisher.stop()
