-- Tracing (issue #18): a writing transaction may `SET LOCAL bridge.traceparent = '<W3C
-- traceparent>'`; the capture trigger stores it with each outbox row it writes, the relay
-- carries it into the history and into the event (`"traceparent"`), and every service's
-- spans join that trace. Unset (or not a valid version-00-shaped traceparent) → NULL:
-- nothing stored, and the cost is one current_setting() per statement, not per row.

ALTER TABLE bridge.outbox ADD COLUMN IF NOT EXISTS traceparent text;
ALTER TABLE bridge.history ADD COLUMN IF NOT EXISTS traceparent text;

-- The setting when it is a well-formed traceparent (2-32-16-2 lower-case hex, version not
-- ff, trace and parent ids not all zero), else NULL. A bad value never fails the write.
CREATE OR REPLACE FUNCTION bridge.current_traceparent() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN tp ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
                     AND left(tp, 2) <> 'ff'
                     AND substr(tp, 4, 32) <> repeat('0', 32)
                     AND substr(tp, 37, 16) <> repeat('0', 16)
                THEN tp END
    FROM (SELECT nullif(current_setting('bridge.traceparent', true), '') AS tp) s
$$;

-- The capture function of 0003, unchanged but for the traceparent column.
CREATE OR REPLACE FUNCTION bridge.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    keycols text[] := TG_ARGV[1:TG_NARGS - 1];
    wrote boolean := false;
    keyexpr text;
    moved bigint;
    tp text := bridge.current_traceparent();
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO bridge.outbox (topic, op, key, payload, traceparent)
        VALUES (TG_ARGV[0], 'truncate', '', '{}'::jsonb, tp);
        wrote := true;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO bridge.outbox (topic, op, key, payload, traceparent)
        SELECT TG_ARGV[0], 'delete', bridge.row_key(r, keycols), r, tp
        FROM (SELECT to_jsonb(bridge_old.*) AS r FROM bridge_old) s;
        wrote := FOUND;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO bridge.outbox (topic, op, key, payload, traceparent)
        SELECT TG_ARGV[0], 'insert', bridge.row_key(r, keycols), r, tp
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
            'INSERT INTO bridge.outbox (topic, op, key, payload, traceparent) '
            'SELECT $1, ''delete'', o.k, to_jsonb(o.r), $2 '
            'FROM (SELECT %1$s AS k, x AS r FROM bridge_old x) o '
            'WHERE o.k NOT IN (SELECT %1$s FROM bridge_new x)', keyexpr)
        USING TG_ARGV[0], tp;
        GET DIAGNOSTICS moved = ROW_COUNT;
        -- ... then the new rows: an update where the key stayed, an insert where it is new
        IF moved = 0 THEN
            INSERT INTO bridge.outbox (topic, op, key, payload, traceparent)
            SELECT TG_ARGV[0], 'update', bridge.row_key(r, keycols), r, tp
            FROM (SELECT to_jsonb(bridge_new.*) AS r FROM bridge_new) s;
            wrote := FOUND;
        ELSE
            EXECUTE format(
                'INSERT INTO bridge.outbox (topic, op, key, payload, traceparent) '
                'SELECT $1, CASE WHEN n.k IN (SELECT %s FROM bridge_old x) '
                '                THEN ''update'' ELSE ''insert'' END, n.k, n.r, $3 '
                'FROM (SELECT bridge.row_key(r, $2) AS k, r '
                '      FROM (SELECT to_jsonb(bridge_new.*) AS r FROM bridge_new) s) n',
                keyexpr)
            USING TG_ARGV[0], keycols, tp;
            wrote := true;
        END IF;
    END IF;
    IF wrote THEN
        PERFORM pg_notify('bridge_outbox', '');
    END IF;
    RETURN NULL;
END $$;
