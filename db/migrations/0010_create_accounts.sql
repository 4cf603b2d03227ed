-- The mailboxes inboxflow serves. Syncs, the staleness schedule and push notifications all key
-- on this table: a mailbox that is not here, or not active, is not synced.
CREATE TABLE accounts (
    user_id                text        PRIMARY KEY,  -- the Gmail address
    state                  text        NOT NULL DEFAULT 'active'
                                       CHECK (state IN ('active', 'paused', 'revoked')),
    auth_kind              text        NOT NULL DEFAULT 'token_file'
                                       CHECK (auth_kind IN ('token_file', 'oauth',
                                                            'service_account', 'anonymous')),
    -- Messages carrying any of these labels are not emitted (SPAM, TRASH, CATEGORY_PROMOTIONS...).
    label_filter           text[]      NOT NULL DEFAULT '{SPAM,TRASH}',
    watch_expires_at       timestamptz,  -- when Gmail stops pushing unless users.watch is renewed
    watch_renewed_at       timestamptz,
    last_sync_requested_at timestamptz,  -- set by whoever emitted the last SyncRequested
    last_synced_at         timestamptz,  -- set by the sync agent when a sync finished
    last_sync_outcome      text        CHECK (last_sync_outcome IN ('ok', 'failed', 'skipped')),
    last_sync_error        text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- What the scheduler scans: active accounts by the last time a sync was asked for.
CREATE INDEX accounts_due_idx ON accounts (last_sync_requested_at NULLS FIRST)
    WHERE state = 'active';
