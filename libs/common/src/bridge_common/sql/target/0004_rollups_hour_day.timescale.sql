-- bridge:no-transaction
-- TimescaleDB path: hierarchical continuous aggregates (TimescaleDB 2.9 or later) with the
-- same relations and columns as the plain path — hours refreshed from `audit_logs_1m`, days
-- from `audit_logs_1h`, and the all-actions totals per minute (from the rows), hour and day
-- — all real-time like the minutes, so the newest buckets include what is not materialised
-- yet. Late rows into materialised hours and days are refreshed by the
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

-- All actions together, one row per bucket with a column per severity (as the plain path's
-- audit_totals_* tables): what unfiltered and severity-filtered questions read.
CREATE MATERIALIZED VIEW IF NOT EXISTS audit_totals_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', created_at) AS bucket,
       sum(CASE WHEN severity = 'debug' THEN 1 ELSE 0 END)::bigint AS debug,
       sum(CASE WHEN severity = 'info' THEN 1 ELSE 0 END)::bigint AS info,
       sum(CASE WHEN severity = 'warning' THEN 1 ELSE 0 END)::bigint AS warning,
       sum(CASE WHEN severity = 'error' THEN 1 ELSE 0 END)::bigint AS error,
       sum(CASE WHEN severity = 'critical' THEN 1 ELSE 0 END)::bigint AS critical
FROM audit_logs_ts
GROUP BY 1
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS audit_totals_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       sum(debug)::bigint AS debug,
       sum(info)::bigint AS info,
       sum(warning)::bigint AS warning,
       sum(error)::bigint AS error,
       sum(critical)::bigint AS critical
FROM audit_totals_1m
GROUP BY 1
WITH NO DATA;

CREATE MATERIALIZED VIEW IF NOT EXISTS audit_totals_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       sum(debug)::bigint AS debug,
       sum(info)::bigint AS info,
       sum(warning)::bigint AS warning,
       sum(error)::bigint AS error,
       sum(critical)::bigint AS critical
FROM audit_totals_1h
GROUP BY 1
WITH NO DATA;

-- each level refreshes a window reaching further back than the one below it. Hours are
-- refreshed every minute like the minutes (incremental: only invalidated buckets), so a
-- row a few hours late shows in the hours within about two minutes; days are materialised
-- only once they ended more than a day ago, and rows that late get the worker's explicit
-- refresh of every level (sink.flush_refresh).
SELECT add_continuous_aggregate_policy('audit_logs_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('audit_logs_1d',
    start_offset => INTERVAL '5 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);

SELECT add_continuous_aggregate_policy('audit_totals_1m',
    start_offset => INTERVAL '2 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('audit_totals_1h',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);
SELECT add_continuous_aggregate_policy('audit_totals_1d',
    start_offset => INTERVAL '5 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour', if_not_exists => TRUE);

SELECT add_retention_policy('audit_logs_1h', INTERVAL '400 days', if_not_exists => TRUE);
SELECT add_retention_policy('audit_logs_1d', INTERVAL '400 days', if_not_exists => TRUE);
SELECT add_retention_policy('audit_totals_1m', INTERVAL '400 days', if_not_exists => TRUE);
SELECT add_retention_policy('audit_totals_1h', INTERVAL '400 days', if_not_exists => TRUE);
SELECT add_retention_policy('audit_totals_1d', INTERVAL '400 days', if_not_exists => TRUE);

-- the minutes already materialised (an upgrade) become hours and days now: the policies
-- only look a few days back
CALL refresh_continuous_aggregate('audit_logs_1m', NULL, now() - INTERVAL '1 minute');
CALL refresh_continuous_aggregate('audit_logs_1h', NULL, now() - INTERVAL '1 hour');
CALL refresh_continuous_aggregate('audit_logs_1d', NULL, now() - INTERVAL '1 day');
CALL refresh_continuous_aggregate('audit_totals_1m', NULL, now() - INTERVAL '1 minute');
CALL refresh_continuous_aggregate('audit_totals_1h', NULL, now() - INTERVAL '1 hour');
CALL refresh_continuous_aggregate('audit_totals_1d', NULL, now() - INTERVAL '1 day');
