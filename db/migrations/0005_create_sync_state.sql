-- Where each user's incremental sync resumes: Gmail's historyId, written by the sync agent only
-- after Kafka acknowledged the MessageDiscovered events that the listing up to it produced.
CREATE TABLE sync_state (
    user_id      text        PRIMARY KEY,
    history_id   numeric(20) NOT NULL,
    last_sync_id text        NOT NULL,
    full_synced  boolean     NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
