-- Consumed Kafka offsets of each sink, written in the same transaction as the rows they
-- produced. `next_offset` is the next record to read; -1 means "from the beginning".
-- A batch commits only if `next_offset` still holds the value its writer read: a consumer
-- that lost its partition in a rebalance finds a moved offset and rolls back.
CREATE TABLE sink_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL CHECK (partition >= 0),
    next_offset bigint      NOT NULL CHECK (next_offset >= -1),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
