-- The metrics API's intents-by-status figures read only this index (an index-only scan):
-- each status's count, and the recent failures as a range on (status, updated_at). It
-- replaces the single-column status index (its prefix serves every query that one did).
--
-- Built inside the migration's transaction: writes to `intents` wait while it is built
-- (well under a second for 100 000 intents). CONCURRENTLY cannot run here: it waits for
-- every other transaction, including a second migrator queued on bridge-migrate's
-- advisory lock (a deadlock). On a large, busy table create it by hand first —
--   CREATE INDEX CONCURRENTLY intents_status_updated_at_idx ON intents (status, updated_at);
-- — and this migration then only drops the old index.
CREATE INDEX IF NOT EXISTS intents_status_updated_at_idx ON intents (status, updated_at);
DROP INDEX IF EXISTS intents_status_idx;
