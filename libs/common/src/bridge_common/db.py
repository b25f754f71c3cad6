"""PostgreSQL access: psycopg 3 async pools and dedicated connections, with backoff.

Pools are async context managers opened inside a service's lifespan; nothing connects at
import time. `connect_with_backoff` is for long-lived single connections (LISTEN, the
notifier's leader lock, the ETL poller's lock) that must survive a database restart;
`keepalive_conninfo` gives such a connection TCP keepalives on both ends, so a lock held by
a host that vanished is released within seconds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from .logging import get_logger

log = get_logger(__name__)


#: TCP keepalives of a lock-holding session, client side (libpq): a dead server is noticed
#: after ~11 s of silence (5 s idle, then 3 probes 2 s apart)
KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
#: the same on the server's end of the session: PostgreSQL ends the session of a client
#: whose host vanished without closing its socket, which releases its advisory locks
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
)


def keepalive_conninfo(dsn: str, *, application_name: str, options: str = "") -> str:
    """`dsn` plus a recognisable application name and TCP keepalives on both ends, for a
    long-lived session that holds a lock (see `KEEPALIVES`, `SERVER_KEEPALIVES`), plus the
    caller's server `options`; options already in the DSN are kept."""
    parts = [conninfo_to_dict(dsn).get("options"), SERVER_KEEPALIVES, options]
    return make_conninfo(
        dsn,
        application_name=application_name,
        options=" ".join(str(p) for p in parts if p),
        **KEEPALIVES,
    )


class Backoff:
    """Exponential backoff with full jitter, capped; `reset()` after a success."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not crypto

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self.attempt = 0


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "bridge",
    connect_timeout: float = 10.0,
    dict_rows: bool = False,
    wait: bool = False,
) -> AsyncIterator[AsyncConnectionPool]:
    """An async connection pool; connections are checked on borrow and replaced when broken.

    `wait=False` lets a service start while the database is still down (its readiness
    check reports it); `wait=True` fails fast instead.
    """
    kwargs: dict[str, Any] = {"autocommit": False}
    if dict_rows:
        kwargs["row_factory"] = dict_row
    pool = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=connect_timeout,
        kwargs=kwargs,
        check=AsyncConnectionPool.check_connection,
        open=False,
    )
    await pool.open(wait=wait, timeout=connect_timeout)
    try:
        yield pool
    finally:
        await pool.close()


async def connect_with_backoff(
    dsn: str,
    *,
    stop: asyncio.Event | None = None,
    autocommit: bool = True,
    what: str = "postgres",
) -> psycopg.AsyncConnection[Any]:
    """Connect, retrying with backoff until it works or `stop` is set (then CancelledError)."""
    backoff = Backoff()
    while True:
        try:
            return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)
        except psycopg.OperationalError as exc:
            delay = backoff.next_delay()
            log.warning("db.connect_failed", what=what, error=str(exc).strip(), retry_in=delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    continue
                raise asyncio.CancelledError("stopping") from None


async def ping(dsn_or_pool: str | AsyncConnectionPool, within: float = 2.0) -> None:
    """Raise unless the database answers `SELECT 1` within `within` seconds."""

    async def _run() -> None:
        if isinstance(dsn_or_pool, str):
            conn = await psycopg.AsyncConnection.connect(dsn_or_pool, autocommit=True)
            async with conn:
                await conn.execute("SELECT 1")
        else:
            async with dsn_or_pool.connection() as conn:
                await conn.execute("SELECT 1")

    await asyncio.wait_for(_run(), within)
