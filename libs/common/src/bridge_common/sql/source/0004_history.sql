-- The history tier: every event the notifier publishes, kept in PostgreSQL for resume
-- whatever Redis forgets. The relay moves each outbox batch here in ONE transaction
-- (delete from the outbox, insert with the ids it assigned, advance the topic's last id)
-- before it appends the same events, with the same ids, to Redis.
CREATE SCHEMA IF NOT EXISTS bridge;

-- One row per event. An event id is `<ms>-<n>`, Redis-stream-shaped, assigned by the relay
-- and increasing per topic. Range-partitioned by `ms` (the publish time in milliseconds)
-- into hourly partitions: retention drops whole partitions, never a bulk DELETE.
CREATE TABLE IF NOT EXISTS bridge.history (
    topic    text        NOT NULL,
    ms       bigint      NOT NULL,
    n        bigint      NOT NULL,
    op       text        NOT NULL,
    key      text        NOT NULL,
    -- the row as published; NULL when it was larger than BRIDGE_MAX_EVENT_BYTES (then the
    -- event said so: key and `size`, no data)
    payload  jsonb,
    size     integer,
    ts       timestamptz NOT NULL,  -- the event's `ts` (commit time, else capture time)
    PRIMARY KEY (topic, ms, n)
) PARTITION BY RANGE (ms);

-- Per topic: the last id assigned (always in the history) and how far Redis was fed.
-- `pub_*` is advanced lazily (it may lag a batch or two behind Redis): on taking the lead
-- the relay re-publishes the rows above it, and the publish script drops ids Redis holds.
CREATE TABLE IF NOT EXISTS bridge.history_topics (
    topic     text   PRIMARY KEY,
    last_ms   bigint NOT NULL,
    last_n    bigint NOT NULL,
    pub_ms    bigint NOT NULL DEFAULT 0,
    pub_n     bigint NOT NULL DEFAULT 0,
    -- the topic's history is complete from this millisecond on (its first event)
    first_ms  bigint NOT NULL
);

-- Below `complete_from_ms` partitions were dropped (retention): ids older than that get
-- `history_lost`. One row.
CREATE TABLE IF NOT EXISTS bridge.history_horizon (
    one               boolean PRIMARY KEY DEFAULT true CHECK (one),
    complete_from_ms  bigint  NOT NULL DEFAULT 0
);
INSERT INTO bridge.history_horizon (one) VALUES (true) ON CONFLICT DO NOTHING;

-- Hourly partitions covering [from_ms, to_ms); returns how many were created.
CREATE OR REPLACE FUNCTION bridge.history_ensure(from_ms bigint, to_ms bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    hour CONSTANT bigint := 3600000;
    s bigint := from_ms - from_ms % hour;
    made integer := 0;
    name text;
BEGIN
    WHILE s < to_ms LOOP
        name := 'history_' || to_char(to_timestamp(s / 1000) AT TIME ZONE 'UTC',
                                      'YYYYMMDD"h"HH24');
        IF to_regclass(format('bridge.%I', name)) IS NULL THEN
            EXECUTE format('CREATE TABLE IF NOT EXISTS bridge.%I PARTITION OF bridge.history '
                           'FOR VALUES FROM (%s) TO (%s)', name, s, s + hour);
            made := made + 1;
        END IF;
        s := s + hour;
    END LOOP;
    RETURN made;
END $$;

-- Drop every partition that lies wholly below `cutoff_ms` and move the horizon up in the
-- same transaction (a reader checks the horizon after reading: never a silent gap).
CREATE OR REPLACE FUNCTION bridge.history_drop_before(cutoff_ms bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    upper_ms bigint;
    horizon bigint := 0;
    dropped integer := 0;
BEGIN
    FOR p IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'bridge.history'::regclass
    LOOP
        upper_ms := substring(p.bound FROM 'TO \(''?(-?[0-9]+)''?\)')::bigint;
        IF upper_ms IS NOT NULL AND upper_ms <= cutoff_ms THEN
            EXECUTE format('DROP TABLE %s', p.rel);
            dropped := dropped + 1;
            horizon := greatest(horizon, upper_ms);
        END IF;
    END LOOP;
    IF horizon > 0 THEN
        UPDATE bridge.history_horizon SET complete_from_ms = greatest(complete_from_ms, horizon);
    END IF;
    RETURN dropped;
END $$;

-- The hour of the migration and the next two, so the first publish finds its partition
-- even before the notifier's maintenance has run.
SELECT bridge.history_ensure((extract(epoch FROM now()) * 1000)::bigint,
                             (extract(epoch FROM now()) * 1000)::bigint + 3 * 3600000);
