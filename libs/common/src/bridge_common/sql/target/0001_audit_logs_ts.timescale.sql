-- bridge:no-transaction
-- TimescaleDB path: hypertable, a real-time continuous aggregate per minute with the same
-- relation name and columns as the plain path's rollup table, compression and retention.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE SCHEMA IF NOT EXISTS bridge;

CREATE TABLE IF NOT EXISTS audit_logs_ts (
    source_id   bigint NOT NULL,
    created_at  timestamptz NOT NULL,
    intent_id   uuid NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    severity    text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    ingested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, created_at)
);

SELECT create_hypertable('audit_logs_ts', 'created_at',
                         chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);

CREATE INDEX IF NOT EXISTS audit_logs_ts_action_idx ON audit_logs_ts (action, created_at DESC);

CREATE MATERIALIZED VIEW IF NOT EXISTS audit_logs_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', created_at) AS bucket,
       action,
       severity,
       count(*) AS events  -- bigint, as the plain path's rollup column
FROM audit_logs_ts
GROUP BY 1, 2, 3
WITH NO DATA;

-- refresh the recent past every minute; real-time aggregation covers the rest
SELECT add_continuous_aggregate_policy('audit_logs_1m',
    start_offset => INTERVAL '2 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);

ALTER TABLE audit_logs_ts SET (timescaledb.compress,
    timescaledb.compress_segmentby = 'action',
    timescaledb.compress_orderby = 'created_at DESC, source_id');
SELECT add_compression_policy('audit_logs_ts', INTERVAL '7 days', if_not_exists => TRUE);

-- retention (90 days) stays well clear of the aggregate's 2-day refresh window, so the
-- aggregate keeps history the raw table has dropped
SELECT add_retention_policy('audit_logs_ts', INTERVAL '90 days', if_not_exists => TRUE);
SELECT add_retention_policy('audit_logs_1m', INTERVAL '400 days', if_not_exists => TRUE);
