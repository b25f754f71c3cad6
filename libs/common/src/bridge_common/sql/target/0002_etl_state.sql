-- ETL worker state on the target database (both paths): the polling watermark and the
-- rows that were dead-lettered (so a bad row reaches the dead-letter stream once, however
-- many times polling re-scans it or the stream re-delivers it).
CREATE SCHEMA IF NOT EXISTS bridge;

CREATE TABLE IF NOT EXISTS bridge.etl_state (
    name        text PRIMARY KEY,               -- 'polling:audit_logs'
    watermark   bigint NOT NULL DEFAULT 0,      -- every source id <= watermark is settled
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS bridge.etl_rejects (
    key         text PRIMARY KEY,               -- 'id:<source id>' or 'entry:<stream id>'
    source_id   bigint NULL,
    reason      text NOT NULL,
    origin      text NOT NULL,                  -- stream | polling | backfill
    rejected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS etl_rejects_rejected_at_idx ON bridge.etl_rejects (rejected_at);
