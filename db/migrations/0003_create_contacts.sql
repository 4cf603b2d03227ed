-- Contacts per mailbox, written by the contacts sink from ContactExtracted events.
-- `contact_messages` is the idempotency ledger: a (contact, role, message) pair is counted
-- once, when its ledger row is first inserted, so redelivered events never double-count.
CREATE TABLE contact_messages (
    user_id     text        NOT NULL,
    address     text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('from', 'to', 'cc', 'bcc', 'reply_to')),
    message_id  text        NOT NULL,
    thread_id   text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, address, role, message_id)
);

CREATE TABLE contacts (
    user_id              text        NOT NULL,
    address              text        NOT NULL,
    display_name         text,
    -- When the kept display name was seen: the latest named sighting wins, in any arrival order.
    display_name_seen_at timestamptz,
    first_seen_at        timestamptz NOT NULL,
    last_seen_at         timestamptz NOT NULL,
    from_count           integer     NOT NULL DEFAULT 0 CHECK (from_count >= 0),
    to_count             integer     NOT NULL DEFAULT 0 CHECK (to_count >= 0),
    cc_count             integer     NOT NULL DEFAULT 0 CHECK (cc_count >= 0),
    bcc_count            integer     NOT NULL DEFAULT 0 CHECK (bcc_count >= 0),
    reply_to_count       integer     NOT NULL DEFAULT 0 CHECK (reply_to_count >= 0),
    PRIMARY KEY (user_id, address)
);

-- "Who do I write to most": the contacts page orders by counts within one mailbox.
CREATE INDEX contacts_by_user_last_seen_idx ON contacts (user_id, last_seen_at DESC);
