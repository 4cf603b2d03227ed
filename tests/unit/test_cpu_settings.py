"""The settings for CPU workers, batches, embed limits and the buffer budget, as stages get them.

Stages are built, not run: nothing connects, and no process starts unless a test warms a pool.
"""

from __future__ import annotations

import os

import pytest

from inboxflow.settings import Settings
from inboxflow.wiring import AGENTS, Resources, batch_size_for, build_stages, catalogue_from
from streams.stages.embed import EmbedStage
from streams.stages.embedding import LocalEmbeddingProvider
from streams.stages.normalize import NormalizeStage


def test_defaults_use_every_core_and_bound_work_per_message() -> None:
    settings = Settings()

    assert settings.cpu_workers == (os.cpu_count() or 1)
    assert settings.embed_max_chunks == 32
    assert settings.worker_buffer_bytes == 1024**3
    assert (settings.timeouts.normalize_record, settings.timeouts.embed_record) == (30.0, 60.0)


async def test_environment_reaches_the_embed_and_normalize_stages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INBOXFLOW_CPU_WORKERS", "3")
    monkeypatch.setenv("INBOXFLOW_EMBED_MAX_CHUNKS", "12")
    monkeypatch.setenv("INBOXFLOW_TIMEOUTS__EMBED_RECORD", "7.5")
    monkeypatch.setenv("INBOXFLOW_TIMEOUTS__NORMALIZE_RECORD", "4")
    settings = Settings()
    catalogue = catalogue_from(settings)
    resources = Resources.from_settings(settings)
    try:
        [embed] = build_stages("embed", catalogue, resources).values()
        [normalize] = build_stages("normalize", catalogue, resources).values()

        assert isinstance(embed, EmbedStage)
        assert isinstance(embed.provider, LocalEmbeddingProvider)
        assert (embed.max_chunks, embed.record_timeout, embed.concurrency) == (12, 7.5, 3)
        assert embed.provider.concurrency == 3  # the model runs in the same workers
        assert isinstance(normalize, NormalizeStage)
        assert normalize.pool is resources.cpu_pool
        assert (normalize.pool.workers, normalize.record_timeout) == (3, 4.0)
        # Events are fitted under email-normalized's max.message.bytes (16 MiB).
        assert normalize.max_record_bytes == 16 * 1024 * 1024
        assert resources.cpu_pool.pids() == []  # workers start on first use
    finally:
        await resources.close()


def test_a_worker_count_below_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXFLOW_CPU_WORKERS", "0")
    with pytest.raises(ValueError, match="cpu_workers"):
        Settings()


def test_agents_doing_local_cpu_work_take_larger_batches_unless_the_environment_says() -> None:
    sizes = {agent: batch_size_for(agent, Settings()) for agent in AGENTS}

    assert sizes == {"sync": 100, "normalize": 500, "extract": 500, "embed": 100, "insight": 100}


def test_one_batch_size_from_the_environment_applies_to_every_agent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INBOXFLOW_BATCH_SIZE", "40")
    settings = Settings()

    assert {batch_size_for(agent, settings) for agent in AGENTS} == {40}


async def test_warming_the_normalize_stage_starts_its_pool_before_any_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INBOXFLOW_CPU_WORKERS", "1")
    settings = Settings()
    resources = Resources.from_settings(settings)
    try:
        [normalize] = build_stages("normalize", catalogue_from(settings), resources).values()
        assert isinstance(normalize, NormalizeStage)
        assert resources.cpu_pool.pids() == []

        await normalize.warm()

        assert len(resources.cpu_pool.pids()) == 1
    finally:
        await resources.close()
