"""The embed stage: EmailNormalized in, EmailEmbedded (one vector per text chunk) out."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from schemas.models import EmailEmbedded, EmailNormalized, EmbeddedChunk, JobKind
from schemas.serde import Serde
from streams.runtime.stage import Outcome, Record
from streams.stages.base import Decoder, NormalizedEmailStage, event_record, utc_now
from streams.stages.chunking import chunk_text
from streams.stages.embedding import EmbeddingProvider


class EmbedStage(NormalizedEmailStage):
    """Chunks each message's text and embeds all chunks of a batch in one provider call."""

    name = "embed"
    kind = JobKind.EMBED
    phase = 0

    def __init__(
        self,
        *,
        serde: Serde,
        provider: EmbeddingProvider,
        embedded_topic: str,
        timeout: float,
        clock: Callable[[], float] = time.time,
        max_chars: int = 1000,
    ) -> None:
        self.normalized = Decoder(serde, EmailNormalized)
        self.serde = serde
        self.provider = provider
        self.embedded_topic = embedded_topic
        self.timeout = timeout
        self.clock = clock
        self.max_chars = max_chars

    def dependencies(self, records: Sequence[Record]) -> list[str]:
        """The embedding provider."""
        return [f"embedding:{self.provider.name}"]

    async def process(self, records: Sequence[Record]) -> list[Outcome]:
        """Embed every decodable message; a provider failure fails the messages it covered."""
        decoded = self.normalized.decode_each(records)
        chunks = {
            i: chunk_text(email.text, max_chars=self.max_chars)
            for i, email in enumerate(decoded)
            if not isinstance(email, Exception)
        }
        texts = [chunk.text for per_message in chunks.values() for chunk in per_message]
        try:
            vectors = await self.provider.embed(texts) if texts else []
        except Exception as exc:  # noqa: BLE001 - routed by the runner, per message
            return [Outcome(error=e if isinstance(e, Exception) else exc) for e in decoded]
        outcomes: list[Outcome] = []
        cursor = 0
        for i, email in enumerate(decoded):
            if isinstance(email, Exception):
                outcomes.append(Outcome(error=email))
                continue
            own = chunks[i]
            event = EmailEmbedded(
                user_id=email.user_id,
                message_id=email.message_id,
                thread_id=email.thread_id,
                model=self.provider.name,
                dimension=self.provider.dimension,
                chunks=[
                    EmbeddedChunk(index=chunk.index, text=chunk.text, vector=vector)
                    for chunk, vector in zip(own, vectors[cursor : cursor + len(own)], strict=True)
                ],
                embedded_at=utc_now(self.clock),
            )
            cursor += len(own)
            outcomes.append(Outcome(outputs=[event_record(self.serde, self.embedded_topic, event)]))
        return outcomes
