"""Reading the PostgreSQL history tier (`bridge.history`), for what Redis no longer holds.

A small, bounded, read-only pool per gateway (`BRIDGE_HISTORY_DSN`, default the source
database; a streaming replica works as well). A batch is read first and the retention
horizon checked after it, in that order: partitions are dropped together with the horizon
moving up, so a batch read just before a drop is still whole, and one read after it is
reported, never silently short.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from bridge_common.history import READ_AFTER, fragment
from bridge_common.logging import get_logger
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .errors import HistoryLost
from .event_ids import EventId, format_id

log = get_logger(__name__)

APPLICATION_NAME = "bridge-gateway-history"

#: how long an unreachable history database is answered for without trying again (s)
_DOWN_FOR = 5.0

#: (event id, id bytes, fragment, gateway-only meta)
Row = tuple[EventId, bytes, bytes, bytes]

_TOPIC_FLOOR = (
    "SELECT t.first_ms, h.complete_from_ms FROM bridge.history_horizon h "
    "LEFT JOIN bridge.history_topics t ON t.topic = %s"
)
_HORIZON = "SELECT complete_from_ms FROM bridge.history_horizon"


def archive_conninfo(dsn: str, statement_timeout_ms: int) -> str:
    """Read-only sessions with a statement timeout: a replay never writes, never hangs."""
    options = conninfo_to_dict(dsn).get("options")
    ours = f"-c default_transaction_read_only=on -c statement_timeout={statement_timeout_ms}"
    return make_conninfo(
        dsn,
        application_name=APPLICATION_NAME,
        connect_timeout=5,
        options=f"{options} {ours}" if options else ours,
    )


class Archive:
    """The history table through a bounded pool (see module docstring)."""

    def __init__(self, pool: AsyncConnectionPool, batch: int = 500) -> None:
        self.pool = pool
        self.batch = batch
        #: after a failure to reach the database, answer at once until then (monotonic)
        self._down_until = 0.0

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; while the database was just found unreachable, fail at
        once instead of making every resume wait for the pool's timeout."""
        if time.monotonic() < self._down_until:
            raise psycopg.OperationalError("the history database was unreachable moments ago")
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout):
            self._down_until = time.monotonic() + _DOWN_FOR
            raise

    async def has_topic(self, topic: str) -> bool:
        """Whether events were ever published on `topic` (False when unreachable)."""
        try:
            async with self._connection() as conn:
                cur = await conn.execute(
                    "SELECT 1 FROM bridge.history_topics WHERE topic = %s", (topic,)
                )
                return await cur.fetchone() is not None
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("archive.topic_lookup_failed", topic=topic, error=str(exc).strip()[:200])
            return False

    async def last_id(self, topic: str) -> EventId | None:
        """The last id the relay assigned on `topic` (None: no event yet); raises
        psycopg errors when the history database cannot answer."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT last_ms, last_n FROM bridge.history_topics WHERE topic = %s", (topic,)
            )
            row = await cur.fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    async def read_after(self, topic: str, after: EventId) -> AsyncIterator[list[Row]]:
        """Yield batches of the topic's events after `after`, oldest first, up to the end
        of the history; HistoryLost when it cannot vouch for all of them."""
        cursor = after
        first = True
        while True:
            try:
                async with self._connection() as conn:
                    if first:
                        await self._check_floor(conn, topic, cursor)
                        first = False
                    cur = await conn.execute(
                        READ_AFTER.encode(),
                        {"topic": topic, "ms": cursor[0], "n": cursor[1], "limit": self.batch},
                    )
                    rows = await cur.fetchall()
                    cur = await conn.execute(_HORIZON)
                    horizon = await cur.fetchone()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("archive.unreachable", topic=topic, error=str(exc).strip()[:200])
                raise HistoryLost(
                    f"events after {format_id(cursor)} on {topic!r} are no longer in Redis and "
                    "the history database cannot be reached; retry later or reload the state",
                    topic=topic,
                ) from None
            except psycopg.Error as exc:
                log.error("archive.query_failed", topic=topic, error=str(exc).strip()[:200])
                raise HistoryLost(
                    f"events after {format_id(cursor)} on {topic!r} are no longer in Redis and "
                    f"the history could not be read ({exc.sqlstate}); reload the state",
                    topic=topic,
                ) from None
            if horizon is not None and cursor[0] < int(horizon[0]):
                raise _retention_lost(topic, cursor)
            if not rows:
                return
            out: list[Row] = []
            for row in rows:
                pos, frag, meta = fragment(row)
                out.append((pos, format_id(pos).encode(), frag, meta))
            cursor = out[-1][0]
            yield out
            if len(rows) < self.batch:
                return

    async def _check_floor(self, conn: Any, topic: str, cursor: EventId) -> None:
        cur = await conn.execute(_TOPIC_FLOOR, (topic,))
        row = await cur.fetchone()
        if row is None:
            raise HistoryLost(
                f"the history database has no history table; events after "
                f"{format_id(cursor)} on {topic!r} cannot be replayed, reload the state",
                topic=topic,
            )
        first_ms, complete_from = row
        if first_ms is None:
            raise HistoryLost(
                f"no event of {topic!r} is in the history; events after {format_id(cursor)} "
                "are no longer retained, reload the state",
                topic=topic,
            )
        if cursor[0] < int(complete_from):
            raise _retention_lost(topic, cursor)
        if cursor[0] < int(first_ms):
            raise HistoryLost(
                f"the history of {topic!r} starts after {format_id(cursor)} (earlier events "
                "were published before it was kept); reload the state",
                topic=topic,
            )


def _retention_lost(topic: str, cursor: EventId) -> HistoryLost:
    return HistoryLost(
        f"events after {format_id(cursor)} on {topic!r} are older than the history's "
        "retention (BRIDGE_HISTORY_RETENTION); reload the state",
        topic=topic,
    )


@asynccontextmanager
async def open_archive(
    dsn: str,
    *,
    max_size: int,
    batch: int,
    statement_timeout: float = 10.0,
    wait_timeout: float = 5.0,
) -> AsyncIterator[Archive]:
    """The pool opens no connection until a replay needs one (a gateway serves live events
    without the history database)."""
    pool = AsyncConnectionPool(
        archive_conninfo(dsn, int(statement_timeout * 1000)),
        min_size=0,
        max_size=max_size,
        name="history",
        timeout=wait_timeout,
        kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
        open=False,
    )
    await pool.open(wait=False)
    try:
        yield Archive(pool, batch)
    finally:
        await pool.close()
