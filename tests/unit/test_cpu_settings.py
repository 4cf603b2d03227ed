"""The settings for CPU workers, embed limits and the buffer budget, as the stages receive them.

Stages are built, not run: no process starts and nothing connects.
"""

from __future__ import annotations

import os

import pytest

from inboxflow.settings import Settings
from inboxflow.wiring import Resources, build_stages, catalogue_from
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
