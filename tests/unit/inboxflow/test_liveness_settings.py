"""The liveness bound: derived from the stage deadlines, and never below the longest of them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inboxflow import settings as settings_module
from inboxflow.settings import Settings, StageTimeouts
from streams.runtime.runner import BREAKER_MAX_WAIT
from streams.stages import embed, sync


def test_the_mirrored_constants_agree_with_streams() -> None:
    assert settings_module._SYNC_PAGE == sync.PAGE_SIZE
    assert settings_module._EMBED_GUARD_SECONDS == embed.GUARD_SECONDS
    assert settings_module._BREAKER_MAX_WAIT_SECONDS == BREAKER_MAX_WAIT


def test_the_default_bound_covers_the_slowest_healthy_batch() -> None:
    settings = Settings()
    assert settings.liveness_stall_seconds is None
    # embed: 240 s of batch plus 60 s for its last message, the runner's 30 s guard, 30 s on an
    # open breaker, then the margin.
    assert settings.timeouts.longest_deadline() == 300
    assert settings.stall_bound() == 300 + 30 + 30 + 120


def test_the_bound_follows_longer_deadlines() -> None:
    settings = Settings(timeouts=StageTimeouts(insight=900))
    assert settings.stall_bound() == 900 + 30 + 30 + 120


def test_a_bound_within_a_stage_deadline_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"INBOXFLOW_LIVENESS_STALL_SECONDS=200.*above 300"):
        Settings(liveness_stall_seconds=200)


def test_an_explicit_bound_above_the_deadlines_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INBOXFLOW_LIVENESS_STALL_SECONDS", "301")
    monkeypatch.setenv("INBOXFLOW_HEALTH_HOST", "0.0.0.0")  # noqa: S104 - a container's probes
    settings = Settings()
    assert settings.stall_bound() == 301
    assert settings.health_host == "0.0.0.0"  # noqa: S104
