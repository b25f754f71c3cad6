"""Loading batches into `audit_logs_ts`: COPY into a session-local staging table, then one
`INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING` — and, on the plain path, the
per-minute rollup upsert fed by exactly the rows that INSERT returned, in the same
transaction.

Guarantee: a row is stored at most once (the key `(source_id, created_at)`), the rollup
counts each stored row exactly once (replays insert nothing, so they count nothing), and
the rejects of a batch are recorded in the same transaction. The per-hour and per-day
rollups follow the per-minute one: statement triggers on `audit_logs_1m` (migration 0004)
add the same deltas in the same statement. Callers acknowledge their input (XACK,
watermark) only after `load` returns, so a crash at any point replays the batch with the
same effect: exactly-once in effect, at-least-once in delivery.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from bridge_common.db import Backoff
from bridge_common.logging import get_logger
from psycopg_pool import AsyncConnectionPool

from .deadletter import DeadLetters, Reject
from .partitions import Partitions
from .refresh import LATE_AFTER, LateRanges
from .stats import EtlStats
from .target import Path
from .transform import SEVERITIES, TargetRow

log = get_logger(__name__)

_STAGE_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS etl_stage (source_id bigint, created_at timestamptz,"
    " intent_id uuid, actor text, action text, severity text, details jsonb)"
    " ON COMMIT DELETE ROWS"
)
_COPY = (
    "COPY etl_stage (source_id, created_at, intent_id, actor, action, severity, details) FROM STDIN"
)
# Sorted inserts and upserts keep concurrent workers from deadlocking on each other's keys.
# date_bin with a fixed origin gives the same UTC-aligned minutes as time_bucket, whatever
# the session's TimeZone.
_LOAD_PLAIN = """
WITH ins AS (
    INSERT INTO audit_logs_ts (source_id, created_at, intent_id, actor, action, severity, details)
    SELECT source_id, created_at, intent_id, actor, action, severity, details
    FROM etl_stage ORDER BY source_id
    ON CONFLICT DO NOTHING
    RETURNING created_at, action, severity
),
agg AS (
    SELECT date_bin('1 minute', created_at, timestamptz '2000-01-01 00:00:00+00') AS bucket,
           action, severity, count(*) AS events
    FROM ins GROUP BY 1, 2, 3
),
up AS (
    INSERT INTO audit_logs_1m (bucket, action, severity, events)
    SELECT bucket, action, severity, events FROM agg ORDER BY 1, 2, 3
    ON CONFLICT (bucket, action, severity)
    DO UPDATE SET events = audit_logs_1m.events + EXCLUDED.events
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT max(created_at) FROM ins),
       (SELECT min(created_at) FROM ins), (SELECT count(*) FROM up)
"""
_LOAD_TIMESCALE = """
WITH ins AS (
    INSERT INTO audit_logs_ts (source_id, created_at, intent_id, actor, action, severity, details)
    SELECT source_id, created_at, intent_id, actor, action, severity, details
    FROM etl_stage ORDER BY source_id
    ON CONFLICT DO NOTHING
    RETURNING created_at, action, severity
)
SELECT count(*), max(created_at), min(created_at), 0,
       array_agg(DISTINCT date_bin('1 minute', created_at, timestamptz '2000-01-01 00:00:00+00'))
           FILTER (WHERE created_at < now() - make_interval(secs => %(late_after)s))
FROM ins
"""
# Same database: rows go from `audit_logs` to `audit_logs_ts` without leaving the server.
# The filter is `transform.from_source`'s fast path; rows failing it take the row path.
_FROM_STAGE = "FROM etl_stage ORDER BY source_id"
_FROM_SOURCE = """FROM audit_logs
    WHERE id > %(lo)s AND id <= %(hi)s AND created_at >= %(since)s AND created_at < %(until)s
      AND created_at >= %(cutoff)s
      AND jsonb_typeof(details) = 'object' AND severity = ANY(%(severities)s)
    ORDER BY id"""
_LOAD_PLAIN_FROM_SOURCE = _LOAD_PLAIN.replace(_FROM_STAGE, _FROM_SOURCE).replace(
    "SELECT source_id, created_at", "SELECT id, created_at"
)
_LOAD_TIMESCALE_FROM_SOURCE = _LOAD_TIMESCALE.replace(_FROM_STAGE, _FROM_SOURCE).replace(
    "SELECT source_id, created_at", "SELECT id, created_at"
)
# Separate target: a source range streamed byte for byte (COPY TO → COPY FROM) into the
# staging table, then the same filtered INSERT … SELECT; what the filter leaves is read back.
_VALID = """created_at >= %(cutoff)s
      AND jsonb_typeof(details) = 'object' AND severity = ANY(%(severities)s)"""
SOURCE_RANGE_COPY = """COPY (
    SELECT id, created_at, intent_id, actor, action, severity, details FROM audit_logs
    WHERE id > %(lo)s AND id <= %(hi)s AND created_at >= %(since)s AND created_at < %(until)s
) TO STDOUT"""
_FROM_STAGE_VALID = "FROM etl_stage WHERE " + _VALID + " ORDER BY source_id"
_LOAD_PLAIN_FROM_STAGE_VALID = _LOAD_PLAIN.replace(_FROM_STAGE, _FROM_STAGE_VALID)
_LOAD_TIMESCALE_FROM_STAGE_VALID = _LOAD_TIMESCALE.replace(_FROM_STAGE, _FROM_STAGE_VALID)
_STAGE_LEFTOVERS = """
SELECT source_id, created_at, intent_id, actor, action, severity, details::text,
       jsonb_typeof(details)
FROM etl_stage
WHERE created_at >= %(cutoff)s
  AND NOT (jsonb_typeof(details) = 'object' AND severity = ANY(%(severities)s))
ORDER BY source_id
"""
#: rows of an id range that the same-database load leaves to the row path
SOURCE_LEFTOVERS = """
    WHERE id > %(lo)s AND id <= %(hi)s AND created_at >= %(since)s AND created_at < %(until)s
      AND created_at >= %(cutoff)s
      AND NOT (jsonb_typeof(details) = 'object' AND severity = ANY(%(severities)s))
    ORDER BY id"""

#: the continuous aggregates (Timescale path), each refreshed from the one before it
_AGGREGATES = (
    ("audit_logs_1m", timedelta(minutes=1)),
    ("audit_logs_1h", timedelta(hours=1)),
    ("audit_logs_1d", timedelta(days=1)),
    ("audit_totals_1m", timedelta(minutes=1)),
    ("audit_totals_1h", timedelta(hours=1)),
    ("audit_totals_1d", timedelta(days=1)),
)
_ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)


def _floor(t: datetime, width: timedelta) -> datetime:
    return _ORIGIN + (t - _ORIGIN) // width * width


def _ceil(t: datetime, width: timedelta) -> datetime:
    return _ORIGIN - (_ORIGIN - t) // width * width


#: errors worth retrying the same batch for (the database, not the data)
_TRANSIENT = (
    psycopg.OperationalError,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)
#: errors that mean some row in the batch is unacceptable to the database
_DATA = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


class Stopping(Exception):
    """The worker is stopping while a batch still waits for the database."""


@dataclass(slots=True)
class LoadResult:
    inserted: int = 0
    duplicates: int = 0
    expired: int = 0
    dead_lettered: int = 0
    db_rejected: int = 0
    newest_inserted: datetime | None = None
    rejected: list[Reject] = field(default_factory=list)


async def _retry_later(
    exc: BaseException, backoff: Backoff, stop: asyncio.Event | None, **facts: Any
) -> None:
    """Log a transient database failure and wait before the next try; while waiting,
    a set `stop` ends the retries with `Stopping`."""
    delay = backoff.next_delay()
    log.warning("load.retry", error=str(exc).strip(), retry_in=round(delay, 2), **facts)
    if stop is None:
        await asyncio.sleep(delay)
        return
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except TimeoutError:
        return
    raise Stopping from exc


class Sink:
    """Loads validated rows (see module docstring); one instance per worker process."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        path: Path,
        dead_letters: DeadLetters,
        stats: EtlStats,
        partitions: Partitions,
    ) -> None:
        self.pool = pool
        self.path = path
        self.dead_letters = dead_letters
        self.stats = stats
        self.partitions = partitions
        self._staged: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()
        # Timescale: buckets that late rows landed in, for the next `flush_refresh`
        self._late = LateRanges()

    async def load(
        self,
        rows: Sequence[TargetRow],
        rejects: Sequence[Reject],
        *,
        origin: str,
        stop: asyncio.Event | None = None,
    ) -> LoadResult:
        """Load one batch, retrying while the database is unavailable (until `stop`)."""
        started = time.monotonic()
        unique: dict[int, TargetRow] = {}
        for r in rows:
            unique.setdefault(r.source_id, r)
        cutoff = self.partitions.expired_before()
        batch = [r for r in unique.values() if r.created_at >= cutoff]
        expired = len(unique) - len(batch)
        batch.sort(key=lambda r: r.source_id)
        self.stats.holding(origin, min((r.created_at for r in batch), default=None))
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                result = await self._load_once(batch, list(rejects), origin)
                break
            except _TRANSIENT as exc:
                await _retry_later(exc, backoff, stop, origin=origin, rows=len(batch))
        result.expired = expired
        result.duplicates = max(0, len(batch) - result.db_rejected - result.inserted)
        self.stats.loaded(origin, result.inserted, result.duplicates, time.monotonic() - started)
        self.stats.committed(origin, result.newest_inserted)
        if expired:
            self.stats.expired(expired)
        if result.dead_lettered:
            self.stats.dead_lettered(origin, result.dead_lettered)
        return result

    async def load_source_range(
        self,
        lo: int,
        hi: int,
        *,
        since: datetime,
        until: datetime | None,
        origin: str,
        stop: asyncio.Event | None = None,
    ) -> LoadResult:
        """Same database only: load source ids `lo < id <= hi` created in `[since, until)`
        with one server-side INSERT … SELECT (the caller made the partitions). Rows the
        filter leaves out are for the caller to load through `load` (they need checks)."""
        started = time.monotonic()
        params = {
            "lo": lo,
            "hi": hi,
            "since": since,
            "until": until or datetime.max.replace(tzinfo=UTC),
            "cutoff": self.partitions.expired_before(),
            "severities": sorted(SEVERITIES),
            "late_after": LATE_AFTER.total_seconds(),
        }
        sql = _LOAD_PLAIN_FROM_SOURCE if self.path == "plain" else _LOAD_TIMESCALE_FROM_SOURCE
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                async with self.pool.connection() as conn:
                    async with conn.transaction():
                        cur = await conn.execute(sql, params, prepare=False)
                        rec = await cur.fetchone()
                break
            except _TRANSIENT as exc:
                await _retry_later(exc, backoff, stop, origin=origin)
        result = self._range_loaded(rec, origin, started)
        return result

    async def load_streamed_range(
        self,
        source: AsyncConnectionPool,
        lo: int,
        hi: int,
        *,
        since: datetime,
        until: datetime | None,
        origin: str,
        stop: asyncio.Event | None = None,
    ) -> tuple[LoadResult, list[Any]]:
        """Separate target: stream source ids `lo < id <= hi` created in `[since, until)`
        into staging and load them with one INSERT … SELECT (the caller made the
        partitions). Returns the result and the staged rows the filter left out, in
        `transform.from_source` form, for the caller to load through `load`."""
        started = time.monotonic()
        params = self.params_for_leftovers(lo, hi, since, until)
        load = (
            _LOAD_PLAIN_FROM_STAGE_VALID
            if self.path == "plain"
            else _LOAD_TIMESCALE_FROM_STAGE_VALID
        )
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                async with self.pool.connection() as conn, source.connection() as sconn:
                    async with conn.transaction(), sconn.transaction():
                        # both sides render and read times the same way
                        await sconn.execute("SET LOCAL DateStyle = 'ISO, MDY'")
                        await conn.execute("SET LOCAL DateStyle = 'ISO, MDY'")
                        if conn not in self._staged:
                            await conn.execute(_STAGE_DDL)
                            self._staged.add(conn)
                        async with sconn.cursor() as scur, conn.cursor() as cur:
                            async with (
                                scur.copy(SOURCE_RANGE_COPY, params) as out,
                                cur.copy(_COPY) as inp,
                            ):
                                async for chunk in out:
                                    await inp.write(chunk)
                            await cur.execute(load, params, prepare=False)
                            rec = await cur.fetchone()
                            await cur.execute(_STAGE_LEFTOVERS, params, prepare=False)
                            leftovers = await cur.fetchall()
                break
            except _TRANSIENT as exc:
                await _retry_later(exc, backoff, stop, origin=origin)
        result = self._range_loaded(rec, origin, started)
        return result, leftovers

    def _range_loaded(self, rec: Any, origin: str, started: float) -> LoadResult:
        """Account for one server-side range load (`inserted, newest, oldest` row)."""
        assert rec is not None
        result = LoadResult(inserted=int(rec[0]), newest_inserted=rec[1])
        if self.path == "timescale":
            self._note_refresh(rec[4])
        self.stats.loaded(origin, result.inserted, 0, time.monotonic() - started)
        self.stats.committed(origin, result.newest_inserted)
        return result

    def params_for_leftovers(
        self, lo: int, hi: int, since: datetime, until: datetime | None
    ) -> dict[str, object]:
        return {
            "lo": lo,
            "hi": hi,
            "since": since,
            "until": until or datetime.max.replace(tzinfo=UTC),
            "cutoff": self.partitions.expired_before(),
            "severities": sorted(SEVERITIES),
            "late_after": LATE_AFTER.total_seconds(),
        }

    async def _load_once(
        self, batch: list[TargetRow], rejects: list[Reject], origin: str
    ) -> LoadResult:
        if self.path == "plain" and batch:
            await self.partitions.ensure({r.day for r in batch})
        async with self.pool.connection() as conn:
            try:
                return await self._copy_insert(conn, batch, rejects)
            except _DATA as exc:
                log.warning("load.batch_rejected", rows=len(batch), error=str(exc).strip())
        # some row is unacceptable to the database: find it, one row per transaction
        result = LoadResult()
        for row in batch:
            async with self.pool.connection() as conn:
                try:
                    one = await self._copy_insert(conn, [row], [])
                except _DATA as exc:
                    reason = f"target rejected the row: {str(exc).strip().splitlines()[0]}"
                    rejects.append(
                        Reject(reason, origin, source_id=row.source_id, payload=repr(row))
                    )
                    result.db_rejected += 1
                    continue
            result.inserted += one.inserted
            if one.newest_inserted is not None:
                result.newest_inserted = max(
                    result.newest_inserted or one.newest_inserted, one.newest_inserted
                )
        async with self.pool.connection() as conn:
            async with conn.transaction():
                result.dead_lettered = await self.dead_letters.record(conn, rejects)
        result.rejected = rejects
        return result

    async def _copy_insert(
        self, conn: psycopg.AsyncConnection[Any], batch: list[TargetRow], rejects: list[Reject]
    ) -> LoadResult:
        result = LoadResult(rejected=rejects)
        async with conn.transaction():
            if batch:
                if conn not in self._staged:
                    await conn.execute(_STAGE_DDL)
                    self._staged.add(conn)
                async with conn.cursor() as cur:
                    async with cur.copy(_COPY) as copy:
                        for row in batch:
                            await copy.write_row(row)
                    if self.path == "plain":
                        await cur.execute(_LOAD_PLAIN)
                    else:
                        await cur.execute(
                            _LOAD_TIMESCALE, {"late_after": LATE_AFTER.total_seconds()}
                        )
                    rec = await cur.fetchone()
                    assert rec is not None
                    result.inserted = int(rec[0])
                    result.newest_inserted = rec[1]
                    if self.path == "timescale":
                        self._note_refresh(rec[4])
            result.dead_lettered = await self.dead_letters.record(conn, rejects)
        return result

    # -- Timescale: late rows behind the continuous aggregate's refresh policy ----------
    def _note_refresh(self, late_buckets: list[datetime] | None) -> None:
        """Remember the buckets rows loaded `LATE_AFTER` behind now went into (see
        refresh.py); rows the insert skipped as duplicates changed nothing and are not
        among them."""
        if late_buckets:
            self._late.add_buckets(late_buckets)

    async def flush_refresh(self) -> None:
        """Refresh the aggregate over the late buckets (Timescale path; autocommit CALLs,
        one per aggregate level and range). Ranges not refreshed stay for the next flush."""
        todo = self._late.take(datetime.now(UTC))
        while todo:
            lo, hi = todo[0]
            try:
                async with self.pool.connection() as conn:
                    await conn.set_autocommit(True)
                    try:
                        # bottom up: each level is refreshed from the one below, over
                        # the whole buckets the range touches
                        for name, width in _AGGREGATES:
                            await conn.execute(
                                "CALL refresh_continuous_aggregate(%s, %s, %s)",
                                (name, _floor(lo, width), _ceil(hi, width)),
                                prepare=False,  # a rare CALL: not worth a server-side plan
                            )
                    finally:
                        await conn.set_autocommit(False)
            except BaseException:
                for start, end in todo:
                    self._late.add(start, end)
                raise
            todo.pop(0)
            self.stats.refreshed(hi - lo)
            log.info("aggregate.refreshed", since=lo.isoformat(), until=hi.isoformat())
