"""The one configuration object, read from environment variables at the edge (the CLI).

Library packages (``topics``, ``sinks``, ``schemas``, ``devstack``) never read the environment:
``cli.py`` builds ``Settings()`` once and passes explicit values down.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Mirrors of streams' constants (a test checks they agree): settings must not import faust.
_SYNC_PAGE = 500  # streams.stages.sync.PAGE_SIZE
_EMBED_GUARD_SECONDS = 30.0  # streams.stages.embed.GUARD_SECONDS
_BREAKER_MAX_WAIT_SECONDS = 30.0  # streams.runtime.runner.BREAKER_MAX_WAIT
LIVENESS_MARGIN_SECONDS = 120.0
"""Slack above a batch's worst case before a partition counts as stalled (publishing, polls)."""


class StageTimeouts(BaseModel):
    """Per-kind deadlines in seconds (``INBOXFLOW_TIMEOUTS__NORMALIZE=90``).

    The old system used one 3-minute timeout for everything; each stage gets its own here.
    """

    model_config = ConfigDict(frozen=True)

    sync_base: float = 120.0
    sync_per_1000_messages: float = 60.0
    normalize: float = 90.0
    # One message's parse in a CPU worker (0.7 s for 21.7 MB of mail); past it the worker is
    # killed and only that message fails.
    normalize_record: float = 30.0
    extract: float = 45.0
    # The embed batch starts no message after this; a started one has `embed_record` more (and
    # never more than this).
    embed: float = 240.0
    # One message's chunks (at most `embed_max_chunks`: about 8 s of one core for the local model).
    embed_record: float = 60.0
    insight: float = 240.0

    def sync_for(self, mailbox_messages: int) -> float:
        """Return the sync deadline for a mailbox of the given size (minutes, never a fixed 3)."""
        return self.sync_base + self.sync_per_1000_messages * mailbox_messages / 1000

    def longest_deadline(self) -> float:
        """Return the longest deadline a stage's batch runs under, in seconds.

        embed: its batch deadline plus one message's; sync: one page of 500 messages (each call
        has its own deadline, whatever the mailbox's size).
        """
        embed = self.embed + min(self.embed_record, self.embed)
        return max(self.normalize, self.extract, embed, self.insight, self.sync_for(_SYNC_PAGE))


class Settings(BaseSettings):
    """Everything inboxflow reads from the environment. Defaults work on the local stack."""

    model_config = SettingsConfigDict(
        env_prefix="INBOXFLOW_",
        env_nested_delimiter="__",
        frozen=True,
        populate_by_name=True,
        extra="ignore",
    )

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "INBOXFLOW_KAFKA_BOOTSTRAP_SERVERS"
        ),
        description="Kafka bootstrap servers, comma separated.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects (managed clusters: SASL_SSL)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism for the SASL_* protocols."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: str | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates; unset: "
        "the system's trust store.",
    )
    kafka_ssl_certfile: str | None = Field(
        None, description="PEM client certificate, for brokers that require mutual TLS."
    )
    kafka_ssl_keyfile: str | None = Field(None, description="PEM key of the client certificate.")
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/inboxflow"),
        validation_alias=AliasChoices("DATABASE_URL", "INBOXFLOW_DATABASE_URL"),
        description="libpq connection URL of the Postgres that holds the jobs table.",
    )
    schema_registry_url: str | None = Field(
        None,
        description="Confluent-compatible schema registry; unset: Avro single-object encoding.",
    )
    stack: Literal["local", "testcontainers"] = Field(
        "local",
        description="How `dev up` and the tests start Kafka and Postgres when no URLs are given.",
    )
    state_dir: str = Field(
        "~/.cache/inboxflow",
        description="Where the local stack keeps its jar cache, data directories and state file.",
    )
    topic_namespace: str = Field(
        "inboxflow",
        description="First part of every topic and consumer group name (tests use their own).",
    )
    topic_partitions: int = Field(
        6, description="Partitions for topics that `topics apply` creates."
    )
    topic_replication: int = Field(1, description="Replication factor for created topics.")
    gmail_api_root: str = Field(
        "https://gmail.googleapis.com/",
        description="Root URL of the Gmail API; point it at the emulator for local runs.",
    )
    gmail_quota_table: Literal["2026", "legacy"] = Field(
        "2026", description="Gmail quota cost table the limiter budgets with."
    )
    gmail_user_units_per_minute: int = Field(
        6000, description="Per-user quota ceiling in units per minute."
    )
    gmail_credentials_dir: str | None = Field(
        None,
        description="Folder of per-user OAuth token JSON files; unset means anonymous (emulator).",
    )
    gmail_oauth_client_file: str | None = Field(
        None,
        description="The OAuth client (installed app) JSON from the Google Cloud console; "
        "`accounts add --oauth` runs its consent flow.",
    )
    token_key: SecretStr | None = Field(
        None,
        description="Key that encrypts Gmail tokens in Postgres (32 bytes, URL-safe base64; "
        "`inboxflow accounts new-key` makes one).",
    )
    token_previous_keys: SecretStr | None = Field(
        None,
        description="Comma-separated earlier token keys: they still decrypt until "
        "`inboxflow accounts rotate-key` has re-encrypted every token with INBOXFLOW_TOKEN_KEY.",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="Log lines as JSON objects or text; auto: text on a terminal, else JSON.",
    )
    gmail_pubsub_topic: str | None = Field(
        None,
        pattern=r"^projects/[^/]+/topics/[^/]+$",
        description="Pub/Sub topic Gmail publishes mailbox changes to "
        "(`projects/<project>/topics/<topic>`); unset: no push, syncs come from the scheduler.",
    )
    push_host: str = Field("127.0.0.1", description="Interface `push-receiver` listens on.")
    push_port: int = Field(8086, ge=0, le=65535, description="Port `push-receiver` listens on.")
    push_audience: str | None = Field(
        None,
        description="Audience of the push subscription's OIDC tokens (its endpoint URL unless "
        "set otherwise); required while INBOXFLOW_PUSH_VERIFY is on.",
    )
    push_service_account: str | None = Field(
        None,
        description="Service account the push subscription authenticates as (the token's "
        "`email`); unset: any Google-signed token for the audience.",
    )
    push_certs_url: str = Field(
        "https://www.googleapis.com/oauth2/v1/certs",
        description="Where the push tokens' signing certificates are fetched (Google's v1 format).",
    )
    push_verify: bool = Field(
        True,
        description="Verify the OIDC token of every push; turn off only where no one else can "
        "reach the receiver.",
    )
    push_coalesce_ms: int = Field(
        1000,
        ge=0,
        le=5000,
        description="Least time between two push-triggered sync requests for one user; "
        "notifications in between wait for one follow-up request.",
    )
    embedding_provider: Literal["local", "openai"] = Field(
        "local", description="`local` runs a bundled CPU model; `openai` calls an HTTP API."
    )
    embedding_api_url: str = Field(
        "http://127.0.0.1:8089/v1", description="OpenAI-compatible embeddings endpoint."
    )
    embedding_api_key: SecretStr = Field(SecretStr(""), description="Bearer token for the API.")
    embedding_model: str = Field("all-MiniLM-L6-v2", description="Embedding model name.")
    embedding_dimension: int = Field(384, description="Vector length of the embedding model.")
    embed_max_chunks: int = Field(
        32,
        ge=1,
        description="Chunks of 1,000 characters embedded per message; the rest is left out and "
        "the event says `truncated`.",
    )
    cpu_workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="Worker processes for CPU-bound work (MIME parsing, the local embedding "
        "model) in each agent process; default: one per core.",
    )
    worker_buffer_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="Bytes of consumed records an agent process may hold (fetched, buffered, "
        "in its batch); sizes its Kafka fetches and each agent's limit on the records it holds.",
    )
    retry_ladders: dict[str, list[int]] = Field(
        default_factory=dict,
        description='Retry delays in seconds per agent, JSON: {"normalize": [5, 30, 120, 600]}.',
    )
    gmail_quota_window_seconds: float = Field(
        60.0, description="Gmail quota window; the per-user ceiling applies per window."
    )
    backfill_quota_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Most of each user's Gmail quota a backfill (`inboxflow backfill`) may "
        "spend; live syncs and fetches always have the rest.",
    )
    backfill_batch_size: int = Field(
        25,
        ge=1,
        description="Backfill messages the sync agent fetches at once (live ones: "
        "INBOXFLOW_BATCH_SIZE).",
    )
    backfill_messages_per_second: float = Field(
        10.0,
        gt=0,
        description="Most backfill messages one sync worker fetches a second, over all users: "
        "the backfill's share of downstream capacity (normalize, extract, embed, insight).",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Records an agent takes at once. Unset: 500 for normalize and extract, "
        "whose work is local CPU, 100 for the agents that call Gmail or a model API.",
    )
    batch_wait: float = Field(0.2, description="Seconds an agent waits to fill a batch.")
    sync_max_staleness: float = Field(
        900.0,
        gt=0,
        description="Seconds an active account may go without a sync request before the "
        "scheduler asks for one (the safety net under push notifications).",
    )
    scheduler_interval: float = Field(
        30.0, gt=0, description="Seconds between the scheduler's looks for stale accounts."
    )
    insight_interval_seconds: float = Field(
        30.0, description="At most one InsightProduced per user per this many seconds."
    )
    session_timeout_seconds: float = Field(
        30.0,
        description="Kafka consumer session timeout: how soon a crashed worker's partitions move.",
    )
    timeouts: StageTimeouts = StageTimeouts()
    metrics_port: int = Field(
        0,
        description="Port of a worker's /metrics, /healthz and /readyz (`worker` gives process "
        "i port + i); 0 disables.",
    )
    health_host: str = Field(
        "127.0.0.1",
        description="Interface the metrics and health endpoints listen on (0.0.0.0 in a "
        "container, for the orchestrator's probes).",
    )
    liveness_stall_seconds: float | None = Field(
        None,
        gt=0,
        description="Seconds a partition may hold waiting records without an ack or commit "
        "before /healthz fails; unset: the longest stage deadline plus 120 s (480 by default). "
        "Must exceed the longest stage deadline.",
    )
    sink_emails: bool = Field(
        False, description="The contacts sink also writes EmailNormalized into the emails table."
    )

    @model_validator(mode="after")
    def _stall_bound_exceeds_deadlines(self) -> Settings:
        longest = self.timeouts.longest_deadline()
        bound = self.liveness_stall_seconds
        if bound is not None and bound <= longest:
            raise ValueError(
                f"INBOXFLOW_LIVENESS_STALL_SECONDS={bound:g} would fail /healthz on a healthy "
                f"batch: the longest stage deadline (INBOXFLOW_TIMEOUTS__*) is {longest:g}s. "
                f"Operator action: set it above {longest:g} or leave it unset"
            )
        return self

    def stall_bound(self) -> float:
        """Return the liveness bound: the setting, or what a healthy batch can take plus a margin.

        The worst healthy batch: the longest stage deadline, the runner's guard beyond embed's
        own deadlines, and the wait on an open circuit breaker before it starts.
        """
        if self.liveness_stall_seconds is not None:
            return self.liveness_stall_seconds
        worst = self.timeouts.longest_deadline() + _EMBED_GUARD_SECONDS + _BREAKER_MAX_WAIT_SECONDS
        return worst + LIVENESS_MARGIN_SECONDS
