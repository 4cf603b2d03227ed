-- Count changes to an aggregate and the change last emitted, so emission is decided by
-- versions (state_version > emitted_version), not by comparing two clocks, and is recorded only
-- after Kafka acknowledged the InsightProduced event.
ALTER TABLE insight_state
    ADD COLUMN state_version   bigint NOT NULL DEFAULT 0,
    ADD COLUMN emitted_version bigint NOT NULL DEFAULT 0;

CREATE INDEX insight_state_pending_idx ON insight_state (last_emitted_at)
    WHERE state_version > emitted_version;
