-- Snapshots and views (issue #15): what the gateway needs to join a snapshot to the stream
-- exactly, and to tell a filtered subscriber that a row left its filter.
-- * every history row keeps the writing transaction's id (`txid`, from the outbox): an
--   event is after a snapshot iff its transaction is not visible in the snapshot's
--   pg_current_snapshot();
-- * an UPDATE's outbox row carries `prior`: the OLD values of the columns the update
--   changed (NULL when none changed), so the gateway can evaluate a filter on the old row
--   (data overlaid with prior). It never reaches clients.
ALTER TABLE bridge.outbox ADD COLUMN IF NOT EXISTS prior jsonb;
ALTER TABLE bridge.history ADD COLUMN IF NOT EXISTS txid xid8;
ALTER TABLE bridge.history ADD COLUMN IF NOT EXISTS prior jsonb;

-- The entries of `old` whose value differs in `new` (NULL when there are none).
CREATE OR REPLACE FUNCTION bridge.changed(old jsonb, new jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_object_agg(e.key, e.value)
    FROM jsonb_each(old) e
    WHERE new -> e.key IS DISTINCT FROM e.value
$$;

-- As 0006 (traceparent included), with the update branch joining each new row to its old
-- row by key to record `prior`. TG_ARGV[0] = topic, TG_ARGV[1..] = key columns.
CREATE OR REPLACE FUNCTION bridge.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    keycols text[] := TG_ARGV[1:TG_NARGS - 1];
    wrote boolean := false;
    keyexpr text;
    n bigint;
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
        -- the key of an old row from its key columns: the same text as bridge.row_key
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
        GET DIAGNOSTICS n = ROW_COUNT;
        wrote := n > 0;
        -- ... then the new rows: an update (with the old values it changed) where the key
        -- stayed, an insert where it is new
        EXECUTE format(
            'INSERT INTO bridge.outbox (topic, op, key, payload, prior, traceparent) '
            'SELECT $1, CASE WHEN o.k IS NULL THEN ''insert'' ELSE ''update'' END, n.k, n.r, '
            '       CASE WHEN o.k IS NOT NULL THEN bridge.changed(o.r, n.r) END, $3 '
            'FROM (SELECT bridge.row_key(r, $2) AS k, r '
            '      FROM (SELECT to_jsonb(bridge_new.*) AS r FROM bridge_new) s) n '
            'LEFT JOIN (SELECT %s AS k, to_jsonb(x) AS r FROM bridge_old x) o ON o.k = n.k',
            keyexpr)
        USING TG_ARGV[0], keycols, tp;
        GET DIAGNOSTICS n = ROW_COUNT;
        wrote := wrote OR n > 0;
    END IF;
    IF wrote THEN
        PERFORM pg_notify('bridge_outbox', '');
    END IF;
    RETURN NULL;
END $$;
