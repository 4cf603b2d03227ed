-- Deletions and label changes from Gmail history, applied by the contacts sink.
--
-- Tombstones: one row per message gone from the mailbox (MessageDeleted). They are kept for
-- good because a deleted message's other events (ContactExtracted, EmailNormalized,
-- MessageLabelsChanged) arrive on other topics and partitions, in any order, and again on every
-- replay: the sink drops each of them when its message has a tombstone, so a deletion holds
-- whatever order the topics are read in. Gmail never reuses a message id.
CREATE TABLE deleted_messages (
    user_id    text        NOT NULL,
    message_id text        NOT NULL,
    -- 'unknown' (a reason added to the schema after this sink was built) is refused, so such a
    -- deletion goes to the dead-letter topic until the sink is upgraded.
    reason     text        NOT NULL CHECK (reason IN ('deleted', 'reconciled')),
    -- Gmail historyIds are unsigned 64-bit: numeric(20) holds every one.
    history_id numeric(20),
    deleted_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, message_id)
);

-- The newest label set seen in the history per message (the highest history_id wins). Kept
-- apart from `emails` because a label change may arrive before the message's email row, or
-- when the emails table is switched off; an email row written later takes its labels from
-- here when this history_id is higher than the one the email was fetched at.
CREATE TABLE message_labels (
    user_id    text        NOT NULL,
    message_id text        NOT NULL,
    label_ids  text[]      NOT NULL,
    history_id numeric(20) NOT NULL,
    PRIMARY KEY (user_id, message_id)
);

-- The history id the row's labels come from (the fetch's or a label change's), so that an older
-- label set never overwrites a newer one. NULL: unknown, loses to any label change.
ALTER TABLE emails ADD COLUMN labels_history_id numeric(20);

-- A deletion finds a message's sightings by message, not by contact (the primary key's order).
CREATE INDEX contact_messages_by_message_idx ON contact_messages (user_id, message_id);

-- The display name of each sighting, so that deleting a message can give its contacts the name
-- of their latest remaining named sighting. Rows written before this migration have none.
ALTER TABLE contact_messages ADD COLUMN display_name text;
