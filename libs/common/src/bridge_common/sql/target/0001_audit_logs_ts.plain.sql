-- Plain PostgreSQL path: native range partitions by day (the ETL worker creates them ahead
-- and drops expired ones) and a per-minute rollup table maintained in the same transaction
-- as the rows it counts.
CREATE SCHEMA IF NOT EXISTS bridge;

CREATE TABLE IF NOT EXISTS audit_logs_ts (
    source_id   bigint NOT NULL,             -- audit_logs.id in the source database
    created_at  timestamptz NOT NULL,
    intent_id   uuid NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    severity    text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    ingested_at timestamptz NOT NULL DEFAULT now(),
    -- the time column is part of the key: a partitioning (and hypertable) rule
    PRIMARY KEY (source_id, created_at)
) PARTITION BY RANGE (created_at);

CREATE INDEX IF NOT EXISTS audit_logs_ts_created_at_idx ON audit_logs_ts (created_at DESC);
CREATE INDEX IF NOT EXISTS audit_logs_ts_action_idx ON audit_logs_ts (action, created_at DESC);

CREATE TABLE IF NOT EXISTS audit_logs_1m (
    bucket    timestamptz NOT NULL,
    action    text NOT NULL,
    severity  text NOT NULL,
    events    bigint NOT NULL,
    PRIMARY KEY (bucket, action, severity)
);
CREATE INDEX IF NOT EXISTS audit_logs_1m_action_bucket_idx ON audit_logs_1m (action, bucket);
