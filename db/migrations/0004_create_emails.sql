-- Normalized emails, optionally written by the contacts sink from EmailNormalized events
-- (switched by configuration). One row per message; the latest normalization wins, so
-- replays and re-normalizations converge on one row.
CREATE TABLE emails (
    user_id      text        NOT NULL,
    message_id   text        NOT NULL,
    thread_id    text        NOT NULL,
    sync_id      text,
    subject      text,
    sender       text,
    recipients   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    sent_at      timestamptz,
    labels       text[]      NOT NULL DEFAULT '{}',
    snippet      text,
    body_text    text,
    size_bytes   bigint,
    attachments  jsonb       NOT NULL DEFAULT '[]'::jsonb,
    normalized_at timestamptz NOT NULL,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    PRIMARY KEY (user_id, message_id)
);

CREATE INDEX emails_by_thread_idx ON emails (user_id, thread_id, sent_at);
