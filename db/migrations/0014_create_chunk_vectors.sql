-- Vectors of chunks already embedded, per user and model, keyed by the SHA-256 of the chunk's
-- whitespace-normalized text (streams.stages.chunking.chunk_hash): the embed stage sends a
-- chunk to the model only when its hash is not here, and reuses the stored vector otherwise.
-- Rows are written with ON CONFLICT DO NOTHING, so replays and concurrent workers agree.
CREATE TABLE chunk_vectors (
    user_id    text        NOT NULL,
    model      text        NOT NULL,
    text_hash  bytea       NOT NULL,
    vector     bytea       NOT NULL,  -- little-endian float32, the model's dimension
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, model, text_hash)
);
