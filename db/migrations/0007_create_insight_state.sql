-- Per-user insight aggregates (streams/insights.py UserInsights as JSON) and when the last
-- InsightProduced was emitted, so emission is at most once per user per interval.
CREATE TABLE insight_state (
    user_id         text        PRIMARY KEY,
    state           jsonb       NOT NULL,
    last_emitted_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
