"""Reading `bridge.outbox` and moving it into `bridge.history` on the leader's connection.

Strategy (argued in docs/architecture.md, "Notifier"): a single active relay reads the
lowest `seq` rows that are visible — every visible row is committed — assigns their event
ids, then moves exactly those rows into the history in one statement (one transaction:
delete from the outbox, insert into the history, advance each topic's last id) and only
then publishes them. A row whose transaction commits late is simply not visible yet; it
stays in the table and is read by a later round, so nothing is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

#: `ts` of an event: the commit time when PostgreSQL records it, else the insert time.
_TS_COMMIT = "coalesce(pg_xact_commit_timestamp(xmin), created_at)"
_TS_INSERT = "created_at"
_TS_COMMIT_O = "coalesce(pg_xact_commit_timestamp(o.xmin), o.created_at)"
_TS_INSERT_O = "o.created_at"
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
    traceparent: str | None  # set by the writing transaction (`bridge.traceparent`)
    committed: float  # `ts` as seconds since the epoch (commit → publish lag)
    txid: str | None = None  # the writing transaction (xid8 as text)
    prior: str | None = None  # an update's old values of the columns it changed (JSON)


@dataclass(slots=True)
class Moves:
    """One batch as the move statement takes it: every row's seq, with its id (NULL for
    a rejected row, deleted without a history entry) and its size when it is too large."""

    seqs: list[int] = field(default_factory=list)
    ms: list[int | None] = field(default_factory=list)
    n: list[int | None] = field(default_factory=list)
    sizes: list[int | None] = field(default_factory=list)


@dataclass(slots=True)
class StateRows:
    """The `bridge.history_topics` rows to write with a batch (columns)."""

    topics: list[str] = field(default_factory=list)
    last_ms: list[int] = field(default_factory=list)
    last_n: list[int] = field(default_factory=list)
    pub_ms: list[int] = field(default_factory=list)
    pub_n: list[int] = field(default_factory=list)
    first_ms: list[int] = field(default_factory=list)


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
        self._move: sql.Composed | None = None

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
            "to_char(({ts}) AT TIME ZONE 'UTC', {iso}), traceparent, "
            "extract(epoch FROM {ts})::float8, txid::text, prior::text FROM bridge.outbox "
            "WHERE seq NOT IN (SELECT unnest(%(skip)s::bigint[])) "
            "ORDER BY seq LIMIT %(limit)s"
        ).format(ts=sql.SQL(ts), iso=sql.SQL(_ISO))
        # Data-modifying CTEs all run, whether the final SELECT reads them or not; that
        # SELECT sees the snapshot from before the DELETE, hence the NOT IN again.
        self._move = sql.SQL(
            # the arrays travel in binary (%b): no per-element quoting on either side
            "WITH x AS (SELECT * FROM unnest(%(seq)b::bigint[], %(ms)b::bigint[], "
            "%(n)b::bigint[], %(big)b::int[]) AS x(seq, ms, n, big)), "
            "moved AS (DELETE FROM bridge.outbox o USING x WHERE o.seq = x.seq "
            "RETURNING o.topic, x.ms, x.n, o.op, o.key, "
            "CASE WHEN x.big IS NULL THEN o.payload END AS payload, x.big AS size, "
            "{ts_o} AS ts, o.traceparent, o.txid, "
            "CASE WHEN x.big IS NULL THEN o.prior END AS prior), "
            "kept AS (INSERT INTO bridge.history "
            "(topic, ms, n, op, key, payload, size, ts, traceparent, txid, prior) "
            "SELECT topic, ms, n, op, key, payload, size, ts, traceparent, txid, prior "
            "FROM moved "
            "WHERE ms IS NOT NULL), "
            "state AS (INSERT INTO bridge.history_topics AS h "
            "(topic, last_ms, last_n, pub_ms, pub_n, first_ms) "
            "SELECT * FROM unnest(%(t)s::text[], %(lms)s::bigint[], %(ln)s::bigint[], "
            "%(pms)s::bigint[], %(pn)s::bigint[], %(fms)s::bigint[]) "
            "ON CONFLICT (topic) DO UPDATE SET last_ms = EXCLUDED.last_ms, "
            "last_n = EXCLUDED.last_n, pub_ms = EXCLUDED.pub_ms, pub_n = EXCLUDED.pub_n) "
            "SELECT seq, topic, op, key, payload::text, "
            "to_char(({ts}) AT TIME ZONE 'UTC', {iso}), traceparent, "
            "extract(epoch FROM {ts})::float8, txid::text, prior::text FROM bridge.outbox "
            "WHERE seq NOT IN (SELECT unnest(%(seq)b::bigint[])) "
            "ORDER BY seq LIMIT %(limit)s"
        ).format(
            ts=sql.SQL(ts),
            ts_o=sql.SQL(_TS_COMMIT_O if self.commit_ts else _TS_INSERT_O),
            iso=sql.SQL(_ISO),
        )

    async def move(self, moves: Moves, limit: int, states: StateRows) -> list[OutboxRow]:
        """Move the batch into the history with its ids (one statement, so one
        transaction), then return the next `limit` rows — one round trip."""
        assert self._move is not None, "setup() first"
        cur = await self.conn.execute(
            self._move,
            {
                "seq": moves.seqs,
                "ms": moves.ms,
                "n": moves.n,
                "big": moves.sizes,
                "t": states.topics,
                "lms": states.last_ms,
                "ln": states.last_n,
                "pms": states.pub_ms,
                "pn": states.pub_n,
                "fms": states.first_ms,
                "limit": limit,
            },
        )
        return [OutboxRow(*r) for r in await cur.fetchall()]

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
