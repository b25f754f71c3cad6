"""Reading a topic's rows for `snapshot` subscriptions and `GET /snapshot/{topic}`.

A pool exists only when `BRIDGE_SNAPSHOT_DSN` is set (the source database or a streaming
replica of it). One snapshot is one REPEATABLE READ, READ ONLY transaction: its first
statement takes the snapshot and returns it (`pg_current_snapshot()`, the
:class:`~.views.Cutover`), then the watched table is read in primary-key order in keyset
pages — never the whole table in memory — under a statement timeout. Rows are filtered
here with the same :class:`~.filters.RowFilter` as events, so a row and an event of the
same values always agree. At most `BRIDGE_GATEWAY_SNAPSHOT_CONCURRENCY` snapshots run at
once per gateway (a waiting one gives up with `unavailable`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
from bridge_common.events import dumps
from bridge_common.logging import get_logger
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .errors import SnapshotUnavailable, Unavailable
from .filters import RowFilter
from .views import Cutover

log = get_logger(__name__)

APPLICATION_NAME = "bridge-gateway-snapshot"

#: rows read per keyset page
PAGE_ROWS = 500
#: a `snapshot` frame holds rows up to about this many bytes (at least one row)
FRAME_BYTES = 256 * 1024
#: how long a snapshot waits for its turn (s)
WAIT = 10.0

_row_decoder = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Table:
    name: str  # regclass text, quoted by PostgreSQL
    keys: tuple[str, ...]


def snapshot_conninfo(dsn: str, statement_timeout_ms: int) -> str:
    options = conninfo_to_dict(dsn).get("options")
    ours = (
        f"-c default_transaction_read_only=on -c statement_timeout={statement_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={max(statement_timeout_ms * 6, 60_000)}"
    )
    return make_conninfo(
        dsn,
        application_name=APPLICATION_NAME,
        connect_timeout=5,
        options=f"{options} {ours}" if options else ours,
    )


class Snapshot:
    """One open snapshot: its cut-over and its rows (read while the transaction lasts)."""

    def __init__(self, conn: Any, topic: str, table: Table, cutover: Cutover) -> None:
        self.conn = conn
        self.topic = topic
        self.table = table
        self.cutover = cutover
        cols = sql.SQL(", ").join(sql.Identifier(k) for k in table.keys)
        # the row as the capture trigger encodes it, its event key, its key columns
        # the row as the capture trigger encodes it (to_jsonb once), its event key, its key
        # columns; the page is cut in the inner query, by the primary key's index
        outer = sql.SQL("SELECT j::text, bridge.row_key(j, {names}), {cols} FROM (").format(
            names=sql.Literal(list(table.keys)), cols=cols
        )
        inner = sql.SQL("SELECT to_jsonb(t) AS j, {cols} FROM {tbl} t ").format(
            cols=cols, tbl=sql.SQL(table.name)
        )
        order = sql.SQL(" ORDER BY {cols} LIMIT %s) s").format(cols=cols)
        marks = sql.SQL(", ").join(sql.Placeholder() for _ in table.keys)
        after = sql.SQL("WHERE ({cols}) > ({marks})").format(cols=cols, marks=marks)
        self._first = outer + inner + order
        self._next = outer + inner + after + order

    async def rows(self, row_filter: RowFilter | None) -> AsyncIterator[tuple[bytes, str]]:
        """The rows (JSON text as PostgreSQL wrote it) matching `row_filter` with their
        event keys, in primary-key order."""
        after: tuple[Any, ...] | None = None
        while True:
            if after is None:
                cur = await self.conn.execute(self._first, (PAGE_ROWS,))
            else:
                cur = await self.conn.execute(self._next, (*after, PAGE_ROWS))
            page = await cur.fetchall()
            for text, key, *keys in page:
                if row_filter is None or row_filter.matches(_row_decoder.decode(text)):
                    yield text.encode(), key
                after = tuple(keys)
            if len(page) < PAGE_ROWS:
                return

    async def frames(self, row_filter: RowFilter | None, limit: int) -> AsyncIterator[bytes]:
        """`snapshot` frames of at most about FRAME_BYTES, each row's event key in `keys`
        beside it; the last frame says `truncated` when more than `limit` rows match (a
        frame is sent only once the next row is known, so the flag lands on the last)."""
        head = b'{"type":"snapshot","topic":' + dumps(self.topic) + b',"rows":['
        frame: list[bytes] = []
        keys: list[str] = []
        size = 0
        count = 0
        truncated = False
        async for row, key in self.rows(row_filter):
            if count == limit:
                truncated = True
                break
            if frame and size + len(row) > FRAME_BYTES:
                yield head + b",".join(frame) + b'],"keys":' + dumps(keys) + b"}"
                frame, keys, size = [], [], 0
            frame.append(row)
            keys.append(key)
            size += len(row) + len(key) + 4
            count += 1
        if frame:
            tail = b',"truncated":true}' if truncated else b"}"
            yield head + b",".join(frame) + b'],"keys":' + dumps(keys) + tail

    async def collect(
        self, row_filter: RowFilter | None, limit: int
    ) -> tuple[dict[str, bytes], bool]:
        """Up to `limit` matching rows by key, and whether more matched (HTTP answer)."""
        out: dict[str, bytes] = {}
        async for row, key in self.rows(row_filter):
            if len(out) == limit:
                return out, True
            out[key] = row
        return out, False


class Snapshots:
    """The snapshot pool and its bounds (see the module docstring)."""

    def __init__(self, pool: AsyncConnectionPool, *, concurrency: int, wait: float = WAIT):
        self.pool = pool
        self.limit = asyncio.Semaphore(concurrency)
        self.wait = wait
        self._tables: dict[str, Table] = {}

    async def _table(self, conn: Any, topic: str) -> Table:
        table = self._tables.get(topic)
        if table is None:
            cur = await conn.execute(
                "SELECT table_name, key_columns FROM bridge.watched_tables WHERE topic = %s",
                (topic,),
            )
            row = await cur.fetchone()
            if row is None:
                raise SnapshotUnavailable(
                    f"topic {topic!r} is not a watched table: it has no rows to snapshot",
                    topic=topic,
                )
            table = self._tables[topic] = Table(row[0], tuple(row[1]))
        return table

    async def published(self, topic: str, cutover: Cutover, wait: float) -> None:
        """Wait until every change of `topic` the snapshot shows has left the outbox (the
        relay moved it into the history); Unavailable when the notifier is behind."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                async with self.pool.connection() as conn:
                    cur = await conn.execute(
                        "SELECT EXISTS (SELECT 1 FROM bridge.outbox WHERE topic = %s "
                        "AND pg_visible_in_snapshot(txid, %s::pg_snapshot))",
                        (topic, cutover.text),
                    )
                    row = await cur.fetchone()
            except (psycopg.OperationalError, PoolTimeout):
                raise Unavailable(
                    "the snapshot database cannot be reached; retry", topic=topic
                ) from None
            if row is not None and not row[0]:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(
                    "the notifier has not yet published the changes this snapshot shows; retry",
                    topic=topic,
                )
            await asyncio.sleep(0.05)

    @asynccontextmanager
    async def open(self, topic: str) -> AsyncIterator[Snapshot]:
        try:
            await asyncio.wait_for(self.limit.acquire(), self.wait)
        except TimeoutError:
            raise Unavailable(
                "too many snapshots are being read on this gateway; retry", topic=topic
            ) from None
        try:
            try:
                cm = self.pool.connection()
                conn = await cm.__aenter__()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                log.warning("snapshot.unreachable", topic=topic, error=str(exc).strip()[:200])
                raise Unavailable(
                    "the snapshot database cannot be reached; retry", topic=topic
                ) from None
            try:
                table = await self._table(conn, topic)
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                # the first statement takes the transaction's snapshot: this one names it
                cur = await conn.execute("SELECT pg_current_snapshot()::text")
                row = await cur.fetchone()
                assert row is not None
                yield Snapshot(conn, topic, table, Cutover(row[0]))
            except psycopg.errors.QueryCanceled:
                raise Unavailable(
                    "the snapshot took longer than BRIDGE_GATEWAY_SNAPSHOT_TIMEOUT; retry "
                    "with a narrower filter or a limit",
                    topic=topic,
                ) from None
            except psycopg.OperationalError as exc:
                log.warning("snapshot.failed", topic=topic, error=str(exc).strip()[:200])
                raise Unavailable("the snapshot database failed; retry", topic=topic) from None
            finally:
                if not conn.closed:
                    try:
                        await conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                await cm.__aexit__(None, None, None)
        finally:
            self.limit.release()


@asynccontextmanager
async def open_snapshots(
    dsn: str | None, *, concurrency: int, statement_timeout: float
) -> AsyncIterator[Snapshots | None]:
    """None when snapshots are disabled; the pool opens connections only when used."""
    if dsn is None:
        yield None
        return
    pool = AsyncConnectionPool(
        snapshot_conninfo(dsn, int(statement_timeout * 1000)),
        min_size=0,
        max_size=concurrency,
        name="snapshot",
        timeout=5.0,
        kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
        open=False,
    )
    await pool.open(wait=False)
    try:
        yield Snapshots(pool, concurrency=concurrency)
    finally:
        await pool.close()
