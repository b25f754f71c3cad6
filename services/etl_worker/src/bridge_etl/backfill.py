"""`bridge-etl backfill --since T`: load every source row created since T, then exit.

It reads by id (keyset pages, starting at the first id created at or after T) while the
previous page loads, so reading and writing overlap. Rows already stored are skipped by
the target's key, so a backfill can be re-run or overlap a live worker safely.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from bridge_common.logging import get_logger
from psycopg_pool import AsyncConnectionPool

from .polling import to_rows
from .sink import Sink
from .transform import SOURCE_SELECT

log = get_logger(__name__)

ORIGIN = "backfill"
_COLS = "id, created_at, intent_id, actor, action, severity, details::text, jsonb_typeof(details)"


async def backfill(
    source: AsyncConnectionPool,
    sink: Sink,
    stop: asyncio.Event,
    *,
    since: datetime,
    until: datetime | None,
    batch_size: int,
) -> int:
    """Load rows with `since <= created_at < until`; returns how many were read."""
    async with source.connection() as conn:
        cur = await conn.execute("SELECT min(id) FROM audit_logs WHERE created_at >= %s", (since,))
        row = await cur.fetchone()
    if row is None or row[0] is None:
        log.info("backfill.nothing", since=since.isoformat())
        return 0
    start = int(row[0]) - 1
    pages: asyncio.Queue[list[Any] | None] = asyncio.Queue(maxsize=2)

    async def read() -> None:
        last = start
        try:
            while not stop.is_set():
                async with source.connection() as conn:
                    cur = await conn.execute(
                        SOURCE_SELECT + " WHERE id > %s AND created_at >= %s"
                        " AND (%s::timestamptz IS NULL OR created_at < %s)"
                        " ORDER BY id LIMIT %s",
                        (last, since, until, until, batch_size),
                    )
                    recs = await cur.fetchall()
                if not recs:
                    return
                last = recs[-1][0]
                await pages.put(recs)
        finally:
            await pages.put(None)

    total = 0
    async with asyncio.TaskGroup() as tg:
        reader = tg.create_task(read())
        while True:
            recs = await pages.get()
            if recs is None:
                break
            rows, rejects = to_rows(recs, ORIGIN)
            await sink.load(rows, rejects, origin=ORIGIN, stop=stop)
            total += len(recs)
        await reader
    await sink.flush_refresh()
    sink.stats.idle(ORIGIN)
    log.info("backfill.done", rows=total, since=since.isoformat())
    return total
