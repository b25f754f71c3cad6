"""Helpers of the history-tier tests: a watched table with an `n` column, rows committed
one transaction each, and waiting for events in the PostgreSQL history and in Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import redis.asyncio as aredis
from bridge_common.channels import Channels
from psycopg import sql

from tests.support.cluster import RedisNode


async def watched_table(dsn: str, table: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id text PRIMARY KEY, n int NOT NULL, note text NOT NULL "
                "DEFAULT '')"
            ).format(sql.Identifier(table))
        )
        await conn.execute("SELECT bridge.watch(%s::regclass)", (table,))


async def insert_rows(dsn: str, table: str, first: int, count: int, note: str = "") -> list[str]:
    """`count` rows, one transaction each; returns their keys in commit order."""
    keys = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for n in range(first, first + count):
            await conn.execute(
                sql.SQL("INSERT INTO {} (id, n, note) VALUES (%s, %s, %s)").format(
                    sql.Identifier(table)
                ),
                (f"k{n}", n, note),
            )
            keys.append(f"k{n}")
    return keys


async def history_ids(dsn: str, topic: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT ms || '-' || n FROM bridge.history WHERE topic = %s ORDER BY ms, n", (topic,)
        )
        return [r[0] for r in await cur.fetchall()]


async def stream_ids(url: str, ns: str, topic: str) -> list[str]:
    client = aredis.Redis.from_url(url)
    try:
        entries = await client.xrange(Channels(ns).stream(topic))
    finally:
        await client.aclose()
    return [e[0].decode() for e in entries]


async def until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def wait_history(dsn: str, topic: str, count: int) -> list[str]:
    """Wait until the history holds `count` events of `topic`; their ids."""
    ids: list[str] = []

    async def enough() -> bool:
        nonlocal ids
        ids = await history_ids(dsn, topic)
        return len(ids) >= count

    await until(enough, 20, f"{count} events of {topic} in the history")
    return ids


async def wait_in_redis(node: RedisNode, ns: str, topic: str, last_id: str) -> None:
    async def there() -> bool:
        ids = await stream_ids(node.url, ns, topic)
        return bool(ids) and ids[-1] == last_id

    await until(there, 20, f"{last_id} in Redis")
