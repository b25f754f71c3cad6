"""Polling mode: read the source `audit_logs` by id from a durable watermark.

Ids come from an identity sequence, so they are handed out in insertion order but become
visible in *commit* order: id 100 can commit after id 101 has been read. Reading only
`id > last seen` would skip it forever. So the poller keeps, in memory, the *gaps* it saw
(ids missing below the highest id it has read) and re-checks each gap once no transaction
that could still hold one of its ids is running:

* a gap is stamped with the snapshot's `xmax` (the next transaction id) taken at least
  `settle_grace` seconds after the gap was first seen — every transaction that took one of
  those ids has an xid below that by then (an id and the xid of the transaction inserting
  it are assigned in the same statement, microseconds apart);
* once the source's snapshot `xmin` (oldest running transaction) has passed that stamp,
  every such transaction has committed or aborted: the gap is re-read in that snapshot,
  what committed is loaded, and the gap is settled (what is still missing was rolled back
  or deleted).

The durable watermark (`bridge.etl_state`, on the target) is the highest id below which
everything is settled: `min(lowest open gap) - 1`, else the highest id read. A restart
resumes from it and re-reads what lies above; those rows are already stored, and the
target's key turns the replay into a no-op. Guarantee: every committed source row is
loaded (assuming the identity's default `CACHE 1`; a larger cache hands out ids
out of order per session and the gap logic covers that too, since the gap is still below
the highest id read), none twice.

One poller is active per target database (a session advisory lock); other workers wait as
standbys, so two workers never do the same reads. The lock's session has TCP keepalives on
both ends (`keepalive_conninfo`): when the leader's host vanishes, PostgreSQL ends the
session within about 11 s and a standby takes over. In event mode the same poller, run to
the end of the source (`once`), is the stream's repair (repair.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from bridge_common.db import Backoff, connect_with_backoff, keepalive_conninfo
from bridge_common.logging import get_logger
from psycopg_pool import AsyncConnectionPool

from .deadletter import Reject
from .errors import BadRow
from .sink import Sink, Stopping
from .stats import EtlStats
from .transform import SOURCE_SELECT, TargetRow, from_source

log = get_logger(__name__)

STATE_NAME = "polling:audit_logs"
#: how the lock session shows in pg_stat_activity
APPLICATION_NAME = "bridge-etl-poller"
#: one active poller per target database (pg_try_advisory_lock key)
POLLER_LOCK = 0x6574_6C70_6F6C  # "etlpol"
#: gaps remembered before they are merged into one range (bounded memory)
MAX_GAPS = 10_000

_COLS = "id, created_at, intent_id, actor, action, severity, details::text, jsonb_typeof(details)"
_SNAPSHOT = (
    "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint"
    " FROM pg_current_snapshot() s"
)


@dataclass(slots=True)
class Gap:
    lo: int
    hi: int
    seen_at: float
    horizon: int | None = None  # xmax stamped settle_grace after seen_at


def to_rows(recs: list[Any], origin: str) -> tuple[list[TargetRow], list[Reject]]:
    rows: list[TargetRow] = []
    rejects: list[Reject] = []
    for rec in recs:
        try:
            rows.append(from_source(rec))
        except BadRow as exc:
            rejects.append(Reject(exc.reason, origin, source_id=rec[0], payload=repr(rec)))
    return rows, rejects


class Poller:
    """The polling loop (see module docstring)."""

    def __init__(
        self,
        source: AsyncConnectionPool,
        target_dsn: str,
        sink: Sink,
        stats: EtlStats,
        *,
        batch_size: int,
        poll_interval: float,
        settle_grace: float,
        origin: str = "polling",
    ) -> None:
        self.source = source
        self.target_dsn = target_dsn
        self.lock_conninfo = keepalive_conninfo(target_dsn, application_name=APPLICATION_NAME)
        self.sink = sink
        self.stats = stats
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.settle_grace = settle_grace
        self.origin = origin
        self.cursor = 0
        self.watermark = 0
        self.gaps: list[Gap] = []

    # -- state ------------------------------------------------------------------------
    async def _read_watermark(self, conn: psycopg.AsyncConnection[Any]) -> int:
        await conn.execute(
            "INSERT INTO bridge.etl_state (name) VALUES (%s) ON CONFLICT DO NOTHING", (STATE_NAME,)
        )
        cur = await conn.execute(
            "SELECT watermark FROM bridge.etl_state WHERE name = %s", (STATE_NAME,)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _save_watermark(self, conn: psycopg.AsyncConnection[Any]) -> None:
        settled = min((g.lo for g in self.gaps), default=self.cursor + 1) - 1
        if settled > self.watermark:
            await conn.execute(
                "UPDATE bridge.etl_state SET watermark = greatest(watermark, %s),"
                " updated_at = now() WHERE name = %s",
                (settled, STATE_NAME),
            )
            self.watermark = settled
            self.stats.set_watermark(settled)

    # -- one poll ---------------------------------------------------------------------
    async def poll_once(self) -> tuple[int, bool]:
        """Read and load one batch (plus settled gaps); returns (rows read, source drained)."""
        async with self.source.connection() as conn:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur = await conn.execute(_SNAPSHOT)
                snap = await cur.fetchone()
                assert snap is not None
                xmin, xmax = int(snap[0]), int(snap[1])
                cur = await conn.execute(
                    SOURCE_SELECT + " WHERE id > %s ORDER BY id LIMIT %s",
                    (self.cursor, self.batch_size),
                )
                recs = await cur.fetchall()
                late = await self._settle(conn, xmin, xmax)
        now = time.monotonic()
        prev = self.cursor
        for rec in recs:
            if rec[0] > prev + 1:
                self.gaps.append(Gap(prev + 1, rec[0] - 1, now))
            prev = rec[0]
        if len(self.gaps) > MAX_GAPS:
            self.gaps = [Gap(self.gaps[0].lo, self.gaps[-1].hi, now)]
        rows, rejects = to_rows(recs + late, self.origin)
        if rows or rejects:
            await self.sink.load(rows, rejects, origin=self.origin, stop=self._stop)
        self.cursor = prev
        drained = len(recs) < self.batch_size
        if drained and not late:
            self.stats.idle(self.origin)
        return len(recs) + len(late), drained

    async def _settle(self, conn: psycopg.AsyncConnection[Any], xmin: int, xmax: int) -> list[Any]:
        """Stamp fresh gaps, re-read the gaps whose transactions have all ended."""
        now = time.monotonic()
        ready: list[Gap] = []
        keep: list[Gap] = []
        for gap in self.gaps:
            if gap.horizon is None and now - gap.seen_at >= self.settle_grace:
                gap.horizon = xmax
                keep.append(gap)
            elif gap.horizon is not None and xmin >= gap.horizon:
                ready.append(gap)
            else:
                keep.append(gap)
        if not ready:
            return []
        cur = await conn.execute(
            SOURCE_SELECT  # noqa: S608 - constant SQL
            + " WHERE id IN (SELECT a.id FROM audit_logs a"
            " JOIN unnest(%s::bigint[], %s::bigint[]) g(lo, hi) ON a.id BETWEEN g.lo AND g.hi)"
            " ORDER BY id LIMIT %s",
            ([g.lo for g in ready], [g.hi for g in ready], self.batch_size),
        )
        late = list(await cur.fetchall())
        if len(late) == self.batch_size:
            # a batch at a time: what lies above the last id read stays ready for next poll
            last = late[-1][0]
            keep.extend(
                Gap(max(g.lo, last + 1), g.hi, g.seen_at, g.horizon) for g in ready if g.hi > last
            )
            keep.sort(key=lambda g: g.lo)
        self.gaps = keep
        if late:
            log.info("polling.late_rows", count=len(late), ids=[r[0] for r in late[:20]])
        return late

    # -- loop -------------------------------------------------------------------------
    _stop: asyncio.Event | None = None

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Poll until `stop`; with `once`, until the source is drained and gaps settled."""
        self._stop = stop
        backoff = Backoff(base=0.2, cap=5.0)
        while not stop.is_set():
            try:
                lock_conn = await connect_with_backoff(
                    self.lock_conninfo, stop=stop, autocommit=True, what="target"
                )
            except asyncio.CancelledError:
                if stop.is_set():
                    return
                raise
            try:
                async with lock_conn:
                    if await self._lead(lock_conn, stop, once=once):
                        return
            except Stopping:
                return
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("polling.failed", error=str(exc).strip(), retry_in="backoff")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.next_delay())

    async def _lead(
        self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event, *, once: bool
    ) -> bool:
        """Hold the poller lock and poll; returns True when done (`once` drained)."""
        announced = False
        while not stop.is_set():
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (POLLER_LOCK,))
            row = await cur.fetchone()
            if row and row[0]:
                break
            if not announced:
                log.info("polling.standby", reason="another worker holds the poller lock")
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, self.poll_interval))
        if stop.is_set():
            return True
        self.watermark = self.cursor = await self._read_watermark(conn)
        self.gaps = []
        self.stats.set_watermark(self.watermark)
        log.info("polling.leading", watermark=self.watermark)
        settle_deadline: float | None = None
        while not stop.is_set():
            n, drained = await self.poll_once()
            await self._save_watermark(conn)
            if drained:
                if once:
                    if not self.gaps:
                        return True
                    if settle_deadline is None:
                        # wait for open gaps to settle, but not forever (a long-running
                        # source transaction); the watermark keeps them for the next run
                        settle_deadline = time.monotonic() + max(10.0, 5 * self.settle_grace)
                    elif time.monotonic() > settle_deadline:
                        log.warning("polling.gaps_open", gaps=len(self.gaps))
                        return True
                    await asyncio.sleep(min(0.2, self.poll_interval))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_interval)
        return True
