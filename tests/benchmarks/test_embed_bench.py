"""``inboxflow bench embed --json``: fewer chunks per email once replies are stripped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.benchmark

INBOXFLOW = str(Path(sys.executable).parent / "inboxflow")


def test_stripped_threads_embed_fewer_chunks_with_the_real_model() -> None:
    completed = subprocess.run(  # noqa: S603
        [INBOXFLOW, "bench", "embed", "--emails", "30", "--json"],
        capture_output=True,
        check=True,
        timeout=900,
    )
    result = json.loads(completed.stdout)
    print(
        f"chunks/email {result['chunks_per_email_before']:.2f} -> "
        f"{result['chunks_per_email_after']:.2f}, emails/s "
        f"{result['emails_per_second_before']:.1f} -> {result['emails_per_second_after']:.1f}, "
        f"recall@5 {result['recall_at_5_before']:.3f} -> {result['recall_at_5_after']:.3f}"
    )
    assert result["emails"] == 30
    assert result["queries"] > 0
    # Replies quote what came before them: stripping must leave fewer chunks, never more.
    assert result["chunks_per_email_after"] < result["chunks_per_email_before"]
    for side in ("before", "after"):
        assert 0.0 <= result[f"recall_at_5_{side}"] <= 1.0
        assert result[f"emails_per_second_{side}"] > 0
