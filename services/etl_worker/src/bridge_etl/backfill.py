"""`bridge-etl backfill --since T`: load every source row created since T, then exit.

It pages through the source by id, starting at the first id created at or after `T`.
When source and target are the same database, each page is one server-side
`INSERT … SELECT` (rows never travel to the worker); otherwise the page is streamed byte
for byte from `COPY … TO STDOUT` on the source into `COPY … FROM STDIN` of the target's
staging table and loaded from there. Either way only the rows that need the worker's
checks (details that are not a JSON object, unknown severities) reach Python. Rows already
stored are skipped by the target's key, so a backfill can be re-run, or overlap a live
worker, safely.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

from bridge_common.logging import get_logger
from psycopg_pool import AsyncConnectionPool

from .polling import to_rows
from .sink import SOURCE_LEFTOVERS, Sink
from .transform import SOURCE_SELECT

log = get_logger(__name__)

ORIGIN = "backfill"
#: pages loaded side by side (two database sessions: one can stream while one inserts)
PAGES_IN_FLIGHT = 2
_PLAN = """
SELECT max(id), count(*) FILTER (WHERE created_at < %s),
       array_agg(DISTINCT (created_at AT TIME ZONE 'UTC')::date)
           FILTER (WHERE created_at >= %s)
FROM (SELECT id, created_at FROM audit_logs
      WHERE id > %s AND created_at >= %s AND created_at < %s ORDER BY id LIMIT %s) page
"""


async def backfill(
    source: AsyncConnectionPool,
    sink: Sink,
    stop: asyncio.Event,
    *,
    since: datetime,
    until: datetime | None,
    batch_size: int,
    same_database: bool = False,
) -> int:
    """Load rows with `since <= created_at < until`; returns how many were stored (rows
    already in the target, past the retention or dead-lettered are not)."""
    async with source.connection() as conn:
        cur = await conn.execute("SELECT min(id) FROM audit_logs WHERE created_at >= %s", (since,))
        row = await cur.fetchone()
    if row is None or row[0] is None:
        log.info("backfill.nothing", since=since.isoformat())
        return 0
    start = int(row[0]) - 1
    end = until or datetime.max.replace(tzinfo=UTC)
    stored, expired = await _pages(
        source, sink, stop, start, since, until, end, batch_size, same_database
    )
    await sink.flush_refresh()
    sink.stats.idle(ORIGIN)
    log.info(
        "backfill.done",
        rows=stored,
        expired=expired,
        since=since.isoformat(),
        same_database=same_database,
    )
    return stored


async def _pages(
    source: AsyncConnectionPool,
    sink: Sink,
    stop: asyncio.Event,
    last: int,
    since: datetime,
    until: datetime | None,
    end: datetime,
    batch_size: int,
    same_database: bool,
) -> tuple[int, int]:
    """Plan `PAGES_IN_FLIGHT` consecutive pages, load them side by side, repeat; returns
    the rows stored and the rows skipped as past the retention."""

    async def load(lo: int, hi: int, expired: int) -> int:
        if same_database:
            result = await sink.load_source_range(
                lo, hi, since=since, until=until, origin=ORIGIN, stop=stop
            )
            async with source.connection() as conn:
                cur = await conn.execute(
                    SOURCE_SELECT + SOURCE_LEFTOVERS,  # noqa: S608 - constant SQL
                    sink.params_for_leftovers(lo, hi, since, until),
                    prepare=False,
                )
                leftovers = await cur.fetchall()
        else:
            result, leftovers = await sink.load_streamed_range(
                source, lo, hi, since=since, until=until, origin=ORIGIN, stop=stop
            )
        stored = result.inserted
        if leftovers:
            rows, rejects = to_rows(leftovers, ORIGIN)
            stored += (await sink.load(rows, rejects, origin=ORIGIN, stop=stop)).inserted
        if expired:
            sink.stats.expired(expired)
        return stored

    total = expired_total = 0
    done = False
    while not stop.is_set() and not done:
        cutoff = sink.partitions.expired_before()
        pages: list[tuple[int, int, int]] = []
        async with source.connection() as conn:
            for _ in range(PAGES_IN_FLIGHT):
                cur = await conn.execute(
                    _PLAN, (cutoff, cutoff, last, since, end, batch_size), prepare=False
                )
                plan = await cur.fetchone()
                if plan is None or plan[0] is None:
                    done = True
                    break
                hi, expired, days = int(plan[0]), int(plan[1]), plan[2] or []
                if sink.path == "plain":
                    await sink.partitions.ensure(d for d in days if isinstance(d, date))
                pages.append((last, hi, expired))
                last = hi
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(load(lo, hi, expired)) for lo, hi, expired in pages]
        total += sum(t.result() for t in tasks)
        expired_total += sum(expired for _, _, expired in pages)
    return total, expired_total
