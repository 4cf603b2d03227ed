-- Message ids a sync already emitted, so a full resync (stale historyId) emits only new ones and
-- no message is fetched from Gmail twice.
CREATE TABLE discovered_messages (
    user_id       text        NOT NULL,
    message_id    text        NOT NULL,
    sync_id       text        NOT NULL,
    discovered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, message_id)
);
