-- A full listing goes one messages.list page per record (the sync agent writes itself a
-- continuation after each page), so nothing holds a whole mailbox in memory.
-- sync_listings: the listing in progress per user, so a second request joins it instead of
-- starting another; sync_listed_ids: the ids a reconcile pass has seen so far, compared with
-- discovered_messages in Postgres when the pass ends.
CREATE TABLE sync_listings (
    user_id      text        PRIMARY KEY,
    sync_id      text        NOT NULL,
    listing_phase text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sync_listed_ids (
    user_id    text NOT NULL,
    sync_id    text NOT NULL,
    message_id text NOT NULL,
    PRIMARY KEY (user_id, sync_id, message_id)
);
