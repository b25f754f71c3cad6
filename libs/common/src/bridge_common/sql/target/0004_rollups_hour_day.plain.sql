-- Plain PostgreSQL path: per-hour and per-day rollups with the per-minute rollup's columns,
-- and all-actions totals per minute, hour and day (one row per bucket, a column per
-- severity), kept in step with `audit_logs_1m` by statement triggers on it. Every change to
-- a minute row (the ETL's upsert in its load transaction, a backfill, an older ETL during a
-- rolling upgrade) moves its hour, its day and their totals by the same delta in the same
-- statement, so every level agrees with the minutes at every commit and inherits their
-- exactly-once rule (only rows the load actually inserted are counted). DELETE is not
-- propagated: retention prunes each level on its own; TRUNCATE of the minutes empties all.
CREATE TABLE IF NOT EXISTS audit_logs_1h (
    bucket    timestamptz NOT NULL,   -- UTC hour
    action    text NOT NULL,
    severity  text NOT NULL,
    events    bigint NOT NULL,
    PRIMARY KEY (bucket, action, severity)
);
CREATE INDEX IF NOT EXISTS audit_logs_1h_action_bucket_idx ON audit_logs_1h (action, bucket);

CREATE TABLE IF NOT EXISTS audit_logs_1d (
    bucket    timestamptz NOT NULL,   -- UTC day
    action    text NOT NULL,
    severity  text NOT NULL,
    events    bigint NOT NULL,
    PRIMARY KEY (bucket, action, severity)
);
CREATE INDEX IF NOT EXISTS audit_logs_1d_action_bucket_idx ON audit_logs_1d (action, bucket);

-- All actions together: what unfiltered and severity-filtered questions read, one row per
-- bucket however many actions there are.
CREATE TABLE IF NOT EXISTS audit_totals_1m (
    bucket    timestamptz PRIMARY KEY,
    debug     bigint NOT NULL DEFAULT 0,
    info      bigint NOT NULL DEFAULT 0,
    warning   bigint NOT NULL DEFAULT 0,
    error     bigint NOT NULL DEFAULT 0,
    critical  bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS audit_totals_1h (LIKE audit_totals_1m INCLUDING ALL);
CREATE TABLE IF NOT EXISTS audit_totals_1d (LIKE audit_totals_1m INCLUDING ALL);

-- Writers of minute rows wait while the existing minutes are summed and the triggers are
-- installed: nothing committed in between can be missed or counted twice.
LOCK TABLE audit_logs_1m IN SHARE ROW EXCLUSIVE MODE;

-- The minute rows a statement inserted (or the signed difference it made to the rows it
-- updated) are added to their hour and day rows and to the totals. Sorted upserts keep
-- concurrent loads from deadlocking; date_bin with a fixed UTC origin ignores the
-- session's TimeZone.
CREATE OR REPLACE FUNCTION bridge.audit_rollup_minutes_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH d AS (SELECT bucket, action, severity, events FROM new_minutes),
    h AS (
        INSERT INTO audit_logs_1h AS r (bucket, action, severity, events)
        SELECT date_bin('1 hour', bucket, timestamptz '2000-01-01 00:00:00+00'), action, severity, sum(events)
        FROM d GROUP BY 1, 2, 3 HAVING sum(events) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (bucket, action, severity) DO UPDATE SET events = r.events + EXCLUDED.events
        RETURNING 1
    ),
    dd AS (
        INSERT INTO audit_logs_1d AS r (bucket, action, severity, events)
        SELECT date_bin('1 day', bucket, timestamptz '2000-01-01 00:00:00+00'), action, severity, sum(events)
        FROM d GROUP BY 1, 2, 3 HAVING sum(events) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (bucket, action, severity) DO UPDATE SET events = r.events + EXCLUDED.events
        RETURNING 1
    ),
    t1 AS (
        INSERT INTO audit_totals_1m AS r (bucket, debug, info, warning, error, critical)
        SELECT date_bin('1 minute', bucket, timestamptz '2000-01-01 00:00:00+00'),
               coalesce(sum(events) FILTER (WHERE severity = 'debug'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'info'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'warning'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'error'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'critical'), 0)
        FROM d GROUP BY 1 ORDER BY 1
        ON CONFLICT (bucket) DO UPDATE SET
            debug = r.debug + EXCLUDED.debug,
            info = r.info + EXCLUDED.info,
            warning = r.warning + EXCLUDED.warning,
            error = r.error + EXCLUDED.error,
            critical = r.critical + EXCLUDED.critical
        RETURNING 1
    ),
    t2 AS (
        INSERT INTO audit_totals_1h AS r (bucket, debug, info, warning, error, critical)
        SELECT date_bin('1 hour', bucket, timestamptz '2000-01-01 00:00:00+00'),
               coalesce(sum(events) FILTER (WHERE severity = 'debug'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'info'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'warning'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'error'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'critical'), 0)
        FROM d GROUP BY 1 ORDER BY 1
        ON CONFLICT (bucket) DO UPDATE SET
            debug = r.debug + EXCLUDED.debug,
            info = r.info + EXCLUDED.info,
            warning = r.warning + EXCLUDED.warning,
            error = r.error + EXCLUDED.error,
            critical = r.critical + EXCLUDED.critical
        RETURNING 1
    )
    INSERT INTO audit_totals_1d AS r (bucket, debug, info, warning, error, critical)
    SELECT date_bin('1 day', bucket, timestamptz '2000-01-01 00:00:00+00'),
           coalesce(sum(events) FILTER (WHERE severity = 'debug'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'info'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'warning'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'error'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'critical'), 0)
    FROM d GROUP BY 1 ORDER BY 1
    ON CONFLICT (bucket) DO UPDATE SET
        debug = r.debug + EXCLUDED.debug,
        info = r.info + EXCLUDED.info,
        warning = r.warning + EXCLUDED.warning,
        error = r.error + EXCLUDED.error,
        critical = r.critical + EXCLUDED.critical;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION bridge.audit_rollup_minutes_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH d AS (SELECT bucket, action, severity, events FROM new_minutes
               UNION ALL
               SELECT bucket, action, severity, -events FROM old_minutes),
    h AS (
        INSERT INTO audit_logs_1h AS r (bucket, action, severity, events)
        SELECT date_bin('1 hour', bucket, timestamptz '2000-01-01 00:00:00+00'), action, severity, sum(events)
        FROM d GROUP BY 1, 2, 3 HAVING sum(events) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (bucket, action, severity) DO UPDATE SET events = r.events + EXCLUDED.events
        RETURNING 1
    ),
    dd AS (
        INSERT INTO audit_logs_1d AS r (bucket, action, severity, events)
        SELECT date_bin('1 day', bucket, timestamptz '2000-01-01 00:00:00+00'), action, severity, sum(events)
        FROM d GROUP BY 1, 2, 3 HAVING sum(events) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (bucket, action, severity) DO UPDATE SET events = r.events + EXCLUDED.events
        RETURNING 1
    ),
    t1 AS (
        INSERT INTO audit_totals_1m AS r (bucket, debug, info, warning, error, critical)
        SELECT date_bin('1 minute', bucket, timestamptz '2000-01-01 00:00:00+00'),
               coalesce(sum(events) FILTER (WHERE severity = 'debug'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'info'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'warning'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'error'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'critical'), 0)
        FROM d GROUP BY 1 ORDER BY 1
        ON CONFLICT (bucket) DO UPDATE SET
            debug = r.debug + EXCLUDED.debug,
            info = r.info + EXCLUDED.info,
            warning = r.warning + EXCLUDED.warning,
            error = r.error + EXCLUDED.error,
            critical = r.critical + EXCLUDED.critical
        RETURNING 1
    ),
    t2 AS (
        INSERT INTO audit_totals_1h AS r (bucket, debug, info, warning, error, critical)
        SELECT date_bin('1 hour', bucket, timestamptz '2000-01-01 00:00:00+00'),
               coalesce(sum(events) FILTER (WHERE severity = 'debug'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'info'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'warning'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'error'), 0),
               coalesce(sum(events) FILTER (WHERE severity = 'critical'), 0)
        FROM d GROUP BY 1 ORDER BY 1
        ON CONFLICT (bucket) DO UPDATE SET
            debug = r.debug + EXCLUDED.debug,
            info = r.info + EXCLUDED.info,
            warning = r.warning + EXCLUDED.warning,
            error = r.error + EXCLUDED.error,
            critical = r.critical + EXCLUDED.critical
        RETURNING 1
    )
    INSERT INTO audit_totals_1d AS r (bucket, debug, info, warning, error, critical)
    SELECT date_bin('1 day', bucket, timestamptz '2000-01-01 00:00:00+00'),
           coalesce(sum(events) FILTER (WHERE severity = 'debug'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'info'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'warning'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'error'), 0),
           coalesce(sum(events) FILTER (WHERE severity = 'critical'), 0)
    FROM d GROUP BY 1 ORDER BY 1
    ON CONFLICT (bucket) DO UPDATE SET
        debug = r.debug + EXCLUDED.debug,
        info = r.info + EXCLUDED.info,
        warning = r.warning + EXCLUDED.warning,
        error = r.error + EXCLUDED.error,
        critical = r.critical + EXCLUDED.critical;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION bridge.audit_rollup_minutes_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE audit_logs_1h, audit_logs_1d, audit_totals_1m, audit_totals_1h, audit_totals_1d;
    RETURN NULL;
END
$$;

-- Catch up with the minutes counted before this migration (none on a new install).
INSERT INTO audit_logs_1h (bucket, action, severity, events)
SELECT date_bin('1 hour', bucket, timestamptz '2000-01-01 00:00:00+00'), action, severity, sum(events)
FROM audit_logs_1m GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (bucket, action, severity) DO NOTHING;
INSERT INTO audit_logs_1d (bucket, action, severity, events)
SELECT date_bin('1 day', bucket, timestamptz '2000-01-01 00:00:00+00'), action, severity, sum(events)
FROM audit_logs_1m GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
ON CONFLICT (bucket, action, severity) DO NOTHING;
INSERT INTO audit_totals_1m (bucket, debug, info, warning, error, critical)
SELECT bucket,
       coalesce(sum(events) FILTER (WHERE severity = 'debug'), 0),
       coalesce(sum(events) FILTER (WHERE severity = 'info'), 0),
       coalesce(sum(events) FILTER (WHERE severity = 'warning'), 0),
       coalesce(sum(events) FILTER (WHERE severity = 'error'), 0),
       coalesce(sum(events) FILTER (WHERE severity = 'critical'), 0)
FROM audit_logs_1m GROUP BY 1 ORDER BY 1
ON CONFLICT (bucket) DO NOTHING;
INSERT INTO audit_totals_1h (bucket, debug, info, warning, error, critical)
SELECT date_bin('1 hour', bucket, timestamptz '2000-01-01 00:00:00+00'),
       sum(debug), sum(info), sum(warning), sum(error), sum(critical)
FROM audit_totals_1m GROUP BY 1 ORDER BY 1
ON CONFLICT (bucket) DO NOTHING;
INSERT INTO audit_totals_1d (bucket, debug, info, warning, error, critical)
SELECT date_bin('1 day', bucket, timestamptz '2000-01-01 00:00:00+00'),
       sum(debug), sum(info), sum(warning), sum(error), sum(critical)
FROM audit_totals_1m GROUP BY 1 ORDER BY 1
ON CONFLICT (bucket) DO NOTHING;

DROP TRIGGER IF EXISTS audit_rollup_inserted ON audit_logs_1m;
CREATE TRIGGER audit_rollup_inserted AFTER INSERT ON audit_logs_1m
    REFERENCING NEW TABLE AS new_minutes
    FOR EACH STATEMENT EXECUTE FUNCTION bridge.audit_rollup_minutes_inserted();
DROP TRIGGER IF EXISTS audit_rollup_updated ON audit_logs_1m;
CREATE TRIGGER audit_rollup_updated AFTER UPDATE ON audit_logs_1m
    REFERENCING OLD TABLE AS old_minutes NEW TABLE AS new_minutes
    FOR EACH STATEMENT EXECUTE FUNCTION bridge.audit_rollup_minutes_updated();
DROP TRIGGER IF EXISTS audit_rollup_truncated ON audit_logs_1m;
CREATE TRIGGER audit_rollup_truncated AFTER TRUNCATE ON audit_logs_1m
    FOR EACH STATEMENT EXECUTE FUNCTION bridge.audit_rollup_minutes_truncated();
