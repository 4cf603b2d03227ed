-- The jobs table the rest of the product reads. One row per unit of work, written by the
-- job-state sink from JobStateChanged events; `version` only ever moves forward.
CREATE TABLE jobs (
    id               text        PRIMARY KEY,
    user_id          text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN (
                         'google_gmail_sync', 'normalize_google_email', 'extract_contacts',
                         'embed', 'insight')),
    status           text        NOT NULL CHECK (status IN (
                         'queued', 'processing', 'retrying', 'done', 'error', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    batch_id         text,
    subject_id       text        NOT NULL,
    last_error       text,
    last_error_class text        CHECK (last_error_class IN (
                         'transient', 'permanent', 'rate_limit', 'quota', 'timeout')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    version          bigint      NOT NULL,
    source_topic     text,
    source_partition integer,
    source_offset    bigint
);

-- Live work per user: what the old dependency manager scanned on every poll.
CREATE INDEX jobs_live_by_user_idx ON jobs (user_id, status, kind, updated_at)
    WHERE status IN ('queued', 'processing');

-- Batch progress pages.
CREATE INDEX jobs_batch_idx ON jobs (batch_id, status, user_id)
    WHERE batch_id IS NOT NULL;

-- Failed jobs that were retried at least once.
CREATE INDEX jobs_failed_retried_idx ON jobs (user_id, status, attempts, updated_at)
    WHERE status = 'error' AND attempts > 0;
