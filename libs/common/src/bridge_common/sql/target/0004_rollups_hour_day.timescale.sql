-- bridge:no-transaction
-- TimescaleDB path: hierarchical continuous aggregates with the per-minute aggregate's
-- columns — hours refreshed from `audit_logs_1m`, days from `audit_logs_1h` (TimescaleDB
-- 2.9 or later) — real-time like the minutes, so the newest hour and day include what is
-- not materialised yet. Late rows into materialised hours and days are refreshed by the
-- ETL worker, level by level (sink.py `flush_refresh`); the policies catch up the rest.
CREATE MATERIALIZED VIEW IF NOT EXISTS audit_logs_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       action,
       severity,
       sum(events)::bigint AS events
FROM audit_logs_1m
GROUP BY 1, 2, 3
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS audit_logs_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       action,
       severity,
       sum(events)::bigint AS events
FROM audit_logs_1h
GROUP BY 1, 2, 3
WITH NO DATA;

-- each level refreshes a window reaching further back than the one below it, after it
SELECT add_continuous_aggregate_policy('audit_logs_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('audit_logs_1d',
    start_offset => INTERVAL '5 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);

SELECT add_retention_policy('audit_logs_1h', INTERVAL '400 days', if_not_exists => TRUE);
SELECT add_retention_policy('audit_logs_1d', INTERVAL '400 days', if_not_exists => TRUE);

-- the minutes already materialised (an upgrade) become hours and days now: the policies
-- only look a few days back
CALL refresh_continuous_aggregate('audit_logs_1m', NULL, now() - INTERVAL '1 minute');
CALL refresh_continuous_aggregate('audit_logs_1h', NULL, now() - INTERVAL '1 hour');
CALL refresh_continuous_aggregate('audit_logs_1d', NULL, now() - INTERVAL '1 day');
