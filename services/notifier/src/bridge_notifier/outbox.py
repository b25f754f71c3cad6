"""Reading and pruning `bridge.outbox` on the leader's connection.

Strategy (argued in docs/architecture.md, "Notifier"): a single active relay reads the
lowest `seq` rows that are visible — every visible row is committed — publishes them,
then deletes exactly those rows. A row whose transaction commits late is simply not
visible yet; it stays in the table and is read by a later round, so nothing is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

#: `ts` of an event: the commit time when PostgreSQL records it, else the insert time.
_TS_COMMIT = "coalesce(pg_xact_commit_timestamp(xmin), created_at)"
_TS_INSERT = "created_at"
_ISO = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
_DELETE = b"DELETE FROM bridge.outbox WHERE seq = ANY(%s::bigint[])"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    topic: str
    op: str
    key: str
    payload: str  # the row as JSON text, spliced into the event without re-encoding
    ts: str  # ISO 8601, UTC


@dataclass(frozen=True, slots=True)
class OutboxStats:
    backlog: int
    lag_seconds: float
    dead_tuples: int  # as last reported by the statistics system


class Outbox:
    """The outbox queries, bound to one autocommit connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.commit_ts = False
        self._select: sql.Composed | None = None

    async def setup(self) -> None:
        """Learn whether commit timestamps are tracked (`ts` = commit time then)."""
        cur = await self.conn.execute("SELECT current_setting('track_commit_timestamp')::bool")
        row = await cur.fetchone()
        self.commit_ts = bool(row and row[0])
        ts = _TS_COMMIT if self.commit_ts else _TS_INSERT
        # One statement prunes the rows Redis already holds and reads the next batch. Its
        # SELECT sees the snapshot from before the DELETE, hence the NOT IN — a hashed
        # anti-join, O(1) per row — which also leaves out the batch being published.
        self._select = sql.SQL(
            "WITH pruned AS (DELETE FROM bridge.outbox WHERE seq = ANY(%(prune)s::bigint[])) "
            "SELECT seq, topic, op, key, payload::text, "
            "to_char(({ts}) AT TIME ZONE 'UTC', {iso}) FROM bridge.outbox "
            "WHERE seq NOT IN (SELECT unnest(%(skip)s::bigint[])) "
            "ORDER BY seq LIMIT %(limit)s"
        ).format(ts=sql.SQL(ts), iso=sql.SQL(_ISO))

    async def fetch(
        self, limit: int, prune: list[int], exclude: list[int] | None = None
    ) -> list[OutboxRow]:
        """Delete the `prune` rows (Redis holds them), then return the `limit` lowest-seq
        committed rows, in seq order, leaving out `exclude` (the batch being published
        meanwhile) — one statement, so one round trip and atomic."""
        assert self._select is not None, "setup() first"
        skip = prune + exclude if exclude else prune
        cur = await self.conn.execute(self._select, {"prune": prune, "skip": skip, "limit": limit})
        return [OutboxRow(*r) for r in await cur.fetchall()]

    async def delete(self, seqs: list[int]) -> int:
        """Prune rows Redis already holds."""
        if not seqs:
            return 0
        cur = await self.conn.execute(_DELETE, (seqs,))
        return cur.rowcount

    async def stats(self, published: list[int]) -> OutboxStats:
        """Rows waiting, and the age of the oldest one (0 when empty), not counting the
        `published` rows that wait only for their prune."""
        cur = await self.conn.execute(
            "SELECT (SELECT count(*) FROM bridge.outbox), coalesce(extract(epoch FROM "
            "clock_timestamp() - (SELECT created_at FROM bridge.outbox "
            "WHERE seq NOT IN (SELECT unnest(%s::bigint[])) ORDER BY seq LIMIT 1)), 0)::float8, "
            "coalesce((SELECT n_dead_tup FROM pg_stat_user_tables "
            "WHERE relid = 'bridge.outbox'::regclass), 0)",
            (published,),
        )
        row = await cur.fetchone()
        assert row is not None
        backlog = max(0, int(row[0]) - len(published))
        return OutboxStats(
            backlog=backlog, lag_seconds=max(0.0, float(row[1])), dead_tuples=int(row[2])
        )

    async def watched_topics(self) -> list[str]:
        cur = await self.conn.execute("SELECT topic FROM bridge.watched_tables ORDER BY topic")
        return [r[0] for r in await cur.fetchall()]
