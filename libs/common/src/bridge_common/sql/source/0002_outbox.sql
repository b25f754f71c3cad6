-- The transactional outbox: capture triggers write one row per changed row in the same
-- transaction as the change, so a committed change is never lost and an aborted one never
-- appears. NOTIFY only wakes the notifier; the outbox table is the source of truth.
CREATE SCHEMA IF NOT EXISTS bridge;

CREATE TABLE IF NOT EXISTS bridge.outbox (
    -- insertion order; NOT commit order: a transaction that commits late can make a lower
    -- seq visible after a higher one (the commit-order gap a reader must handle).
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the writing transaction, so a reader can use the pg_snapshot_xmin horizon.
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    topic       text NOT NULL,
    op          text NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    key         text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS outbox_txid_idx ON bridge.outbox (txid);

-- Tables whose changes are captured, and the topic each publishes on.
CREATE TABLE IF NOT EXISTS bridge.watched_tables (
    table_name   text PRIMARY KEY,          -- schema-qualified
    topic        text NOT NULL UNIQUE,
    key_columns  text[] NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now()
);

-- Primary key of a row as text: the single column's value, or the values joined by ','.
CREATE OR REPLACE FUNCTION bridge.row_key(r jsonb, keycols text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cardinality(keycols) = 1 THEN coalesce(r ->> keycols[1], '')
                ELSE array_to_string(ARRAY(SELECT coalesce(r ->> c, '') FROM unnest(keycols) c), ',')
           END
$$;

-- Statement-level capture with transition tables: one INSERT … SELECT per statement,
-- so bulk writes cost one outbox statement, not one trigger call per row. One function
-- serves the three triggers: inserts and updates expose the new rows as `bridge_new`,
-- deletes the old rows as `bridge_old` (each branch only runs under its own trigger).
-- TG_ARGV[0] = topic, TG_ARGV[1..] = key columns.
CREATE OR REPLACE FUNCTION bridge.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    keycols text[] := TG_ARGV[1:TG_NARGS - 1];
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO bridge.outbox (topic, op, key, payload)
        SELECT TG_ARGV[0], 'delete', bridge.row_key(r, keycols), r
        FROM (SELECT to_jsonb(bridge_old.*) AS r FROM bridge_old) s;
    ELSE
        INSERT INTO bridge.outbox (topic, op, key, payload)
        SELECT TG_ARGV[0], lower(TG_OP), bridge.row_key(r, keycols), r
        FROM (SELECT to_jsonb(bridge_new.*) AS r FROM bridge_new) s;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('bridge_outbox', '');
    END IF;
    RETURN NULL;
END $$;

-- Attach the capture triggers to a table; its topic defaults to the table's name.
CREATE OR REPLACE FUNCTION bridge.watch(tbl regclass, topic text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    cols text[];
    t text;
    args text;
BEGIN
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO cols
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF cols IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key; Bridge Lite needs one to key events', tbl;
    END IF;
    SELECT c.relname INTO t FROM pg_class c WHERE c.oid = tbl;
    t := coalesce(topic, t);
    IF t !~ '^[A-Za-z_][A-Za-z0-9_.\-]{0,62}$' THEN
        RAISE EXCEPTION 'topic name % is not allowed (letters, digits, _ . -)', t;
    END IF;
    args := quote_literal(t) || ', '
            || (SELECT string_agg(quote_literal(c), ', ') FROM unnest(cols) c);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_delete ON %s', tbl);
    EXECUTE format('CREATE TRIGGER bridge_capture_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS bridge_new FOR EACH STATEMENT '
                   'EXECUTE FUNCTION bridge.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER bridge_capture_update AFTER UPDATE ON %s '
                   'REFERENCING NEW TABLE AS bridge_new FOR EACH STATEMENT '
                   'EXECUTE FUNCTION bridge.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER bridge_capture_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS bridge_old FOR EACH STATEMENT '
                   'EXECUTE FUNCTION bridge.capture(%s)', tbl, args);
    INSERT INTO bridge.watched_tables (table_name, topic, key_columns)
    VALUES (tbl::text, t, cols)
    ON CONFLICT (table_name) DO UPDATE SET topic = EXCLUDED.topic,
        key_columns = EXCLUDED.key_columns, installed_at = now();
    RETURN t;
END $$;

CREATE OR REPLACE FUNCTION bridge.unwatch(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_delete ON %s', tbl);
    DELETE FROM bridge.watched_tables WHERE table_name = tbl::text;
END $$;

SELECT bridge.watch('intents');
SELECT bridge.watch('audit_logs');
