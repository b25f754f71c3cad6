-- Capture hardening (issues #22 and #23):
-- * composite primary keys are encoded unambiguously (a JSON array of the key values as
--   text); single-column keys stay the column's value as text, exactly as before;
-- * an UPDATE that changes a row's primary key gives a `delete` of the old key (old row)
--   followed by an `insert` of the new one, so no client keeps a ghost row;
-- * TRUNCATE of a watched table gives one `truncate` event (key "", data {}): clients
--   drop what they hold for the topic and reload;
-- * `bridge.watch` refuses Bridge's own schema (capturing the outbox would recurse) and
--   the reserved topic names.

ALTER TABLE bridge.outbox DROP CONSTRAINT IF EXISTS outbox_op_check;
ALTER TABLE bridge.outbox ADD CONSTRAINT outbox_op_check
    CHECK (op IN ('insert', 'update', 'delete', 'truncate'));

-- Topic names no watched table may publish on: the alerter's `alerts` topic shares its
-- stream and dedupe set with anything published under that name. Mirrors
-- bridge_common.channels.RESERVED_TOPICS.
CREATE OR REPLACE FUNCTION bridge.reserved_topics() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT ARRAY['alerts'] $$;

-- Primary key of a row as text. One column: its value (`42`, `a,b`). Several columns: a
-- JSON array of their values as text (`["1","x,y"]`), which no two distinct keys share.
CREATE OR REPLACE FUNCTION bridge.row_key(r jsonb, keycols text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN cardinality(keycols) = 1 THEN coalesce(r ->> keycols[1], '')
                ELSE to_json(ARRAY(SELECT coalesce(r ->> c, '') FROM unnest(keycols) c))::text
           END
$$;

-- TG_ARGV[0] = topic, TG_ARGV[1..] = key columns. Statement-level: inserts see the new
-- rows as `bridge_new`, deletes the old ones as `bridge_old`, updates both.
CREATE OR REPLACE FUNCTION bridge.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    keycols text[] := TG_ARGV[1:TG_NARGS - 1];
    wrote boolean := false;
    keyexpr text;
    moved bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO bridge.outbox (topic, op, key, payload)
        VALUES (TG_ARGV[0], 'truncate', '', '{}'::jsonb);
        wrote := true;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO bridge.outbox (topic, op, key, payload)
        SELECT TG_ARGV[0], 'delete', bridge.row_key(r, keycols), r
        FROM (SELECT to_jsonb(bridge_old.*) AS r FROM bridge_old) s;
        wrote := FOUND;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO bridge.outbox (topic, op, key, payload)
        SELECT TG_ARGV[0], 'insert', bridge.row_key(r, keycols), r
        FROM (SELECT to_jsonb(bridge_new.*) AS r FROM bridge_new) s;
        wrote := FOUND;
    ELSE
        -- the key of an old row, from its key columns only (a whole-row to_jsonb of every
        -- old row would double the cost of bulk updates); the same text as bridge.row_key
        SELECT CASE WHEN cardinality(keycols) = 1
                    THEN format('coalesce(to_jsonb(x.%I) #>> ''{}'', '''')', keycols[1])
                    ELSE 'to_json(ARRAY[' || string_agg(
                             format('coalesce(to_jsonb(x.%I) #>> ''{}'', '''')', c), ', '
                             ORDER BY ord) || '])::text'
               END
        INTO keyexpr
        FROM unnest(keycols) WITH ORDINALITY AS u(c, ord);
        -- keys that left the table in this UPDATE: a delete of the old row first ...
        EXECUTE format(
            'INSERT INTO bridge.outbox (topic, op, key, payload) '
            'SELECT $1, ''delete'', o.k, to_jsonb(o.r) '
            'FROM (SELECT %1$s AS k, x AS r FROM bridge_old x) o '
            'WHERE o.k NOT IN (SELECT %1$s FROM bridge_new x)', keyexpr)
        USING TG_ARGV[0];
        GET DIAGNOSTICS moved = ROW_COUNT;
        -- ... then the new rows: an update where the key stayed, an insert where it is new
        IF moved = 0 THEN
            INSERT INTO bridge.outbox (topic, op, key, payload)
            SELECT TG_ARGV[0], 'update', bridge.row_key(r, keycols), r
            FROM (SELECT to_jsonb(bridge_new.*) AS r FROM bridge_new) s;
            wrote := FOUND;
        ELSE
            EXECUTE format(
                'INSERT INTO bridge.outbox (topic, op, key, payload) '
                'SELECT $1, CASE WHEN n.k IN (SELECT %s FROM bridge_old x) '
                '                THEN ''update'' ELSE ''insert'' END, n.k, n.r '
                'FROM (SELECT bridge.row_key(r, $2) AS k, r '
                '      FROM (SELECT to_jsonb(bridge_new.*) AS r FROM bridge_new) s) n',
                keyexpr)
            USING TG_ARGV[0], keycols;
            wrote := true;
        END IF;
    END IF;
    IF wrote THEN
        PERFORM pg_notify('bridge_outbox', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION bridge.watch(tbl regclass, topic text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    cols text[];
    t text;
    nsp text;
    kind "char";
    args text;
BEGIN
    SELECT n.nspname, c.relname, c.relkind INTO nsp, t, kind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl;
    IF nsp = 'bridge' OR nsp IN ('pg_catalog', 'information_schema', 'pg_toast')
       OR nsp LIKE 'pg_temp%' OR nsp LIKE 'pg_toast_temp%' THEN
        -- the capture trigger writes to bridge.outbox: watching Bridge's own tables would
        -- recurse on every write
        RAISE EXCEPTION 'table % is in schema %, which Bridge Lite cannot watch', tbl, nsp
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO cols
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = tbl AND i.indisprimary;
    IF cols IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key; Bridge Lite needs one to key events', tbl;
    END IF;
    t := coalesce(topic, t);
    IF t !~ '^[A-Za-z_][A-Za-z0-9_.\-]{0,62}$' THEN
        RAISE EXCEPTION 'topic name % is not allowed (letters, digits, _ . -)', t;
    END IF;
    IF lower(t) = ANY (bridge.reserved_topics()) THEN
        RAISE EXCEPTION 'topic name % is reserved by Bridge Lite; choose another with --topic', t
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    args := quote_literal(t) || ', '
            || (SELECT string_agg(quote_literal(c), ', ') FROM unnest(cols) c);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_insert ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_update ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_truncate ON %s', tbl);
    EXECUTE format('CREATE TRIGGER bridge_capture_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS bridge_new FOR EACH STATEMENT '
                   'EXECUTE FUNCTION bridge.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER bridge_capture_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS bridge_old NEW TABLE AS bridge_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION bridge.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER bridge_capture_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS bridge_old FOR EACH STATEMENT '
                   'EXECUTE FUNCTION bridge.capture(%s)', tbl, args);
    EXECUTE format('CREATE TRIGGER bridge_capture_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION bridge.capture(%s)', tbl, args);
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
    EXECUTE format('DROP TRIGGER IF EXISTS bridge_capture_truncate ON %s', tbl);
    DELETE FROM bridge.watched_tables WHERE table_name = tbl::text;
END $$;

-- Re-install the triggers of every watched table (update now sees old and new rows;
-- truncate is captured). A watch on Bridge's own schema (it made every write fail) is
-- removed; a table watched under a reserved topic keeps its old triggers until it is
-- re-watched under another name.
DO $$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT table_name, topic, to_regclass(table_name) AS tbl
             FROM bridge.watched_tables
    LOOP
        IF w.tbl IS NULL THEN
            CONTINUE;
        ELSIF (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.oid = w.tbl) = 'bridge' THEN
            PERFORM bridge.unwatch(w.tbl);
        ELSIF lower(w.topic) <> ALL (bridge.reserved_topics()) THEN
            PERFORM bridge.watch(w.tbl, w.topic);
        END IF;
    END LOOP;
END $$;
