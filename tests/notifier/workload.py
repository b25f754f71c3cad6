"""Writers that change a watched table concurrently, and the check that its stream holds
exactly the committed changes, each once, in per-row commit order.

Each row carries a version `v`: inserted as 0, and every committed UPDATE sets
`v = v + 1`. An aborted update does not move `v`, so the events of one key must carry
exactly 0, 1, …, v_final in stream order — a lost, duplicated, aborted or reordered change
breaks that sequence.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

import psycopg
from bridge_common.channels import Channels
from bridge_common.events import assemble_event, decode_event
from psycopg import sql


async def create_watched_table(dsn: str, table: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0,"
                " w int NOT NULL, pad text NOT NULL DEFAULT '')"
            ).format(sql.Identifier(table))
        )
        await conn.execute("SELECT bridge.watch(%s)", (table,))


async def writer(
    dsn: str,
    table: str,
    wid: int,
    transactions: int,
    *,
    seed: int,
    rollback_rate: float = 0.25,
    pace: float = 0.0,
    id_offset: int = 0,
) -> int:
    """Random transactions of 1-3 statements (multi-row inserts, single-row updates of
    rows any writer made), committed or rolled back at random. Returns commits."""
    rnd = random.Random(seed * 1000 + wid)
    next_id = wid * 10_000_000 + id_offset
    tbl = sql.Identifier(table)
    ins = sql.SQL(
        "INSERT INTO {} (id, w, pad) SELECT g, %s::int, repeat('x', %s::int)"
        " FROM generate_series(%s::bigint, %s::bigint) g"
    ).format(tbl)
    upd = sql.SQL(
        "UPDATE {} SET v = v + 1"
        " WHERE id = (SELECT id FROM {} WHERE id >= %s::bigint ORDER BY id LIMIT 1)"
    ).format(tbl, tbl)
    commits = 0
    conn = await _connect(dsn)
    try:
        for _ in range(transactions):
            try:
                for _ in range(rnd.randint(1, 3)):
                    if rnd.random() < 0.35:
                        n = rnd.randint(1, 5)
                        await conn.execute(
                            ins, (wid, rnd.randint(0, 200), next_id, next_id + n - 1)
                        )
                        next_id += n
                    else:
                        # any writer's row: the same rows are changed by many writers
                        lo = rnd.randint(0, 7) * 10_000_000 + rnd.randint(0, 40)
                        await conn.execute(upd, (lo,))
                    if rnd.random() < 0.2:
                        await asyncio.sleep(rnd.random() * 0.002)
                if rnd.random() < rollback_rate:
                    await conn.rollback()
                else:
                    await conn.commit()
                    commits += 1
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                await conn.rollback()
            except psycopg.OperationalError:
                # the server restarted: whether the last commit landed is unknown, which is
                # fine — the check compares the stream with the table, not with this count
                await conn.close()
                conn = await _connect(dsn)
            if pace:
                await asyncio.sleep(pace)
    finally:
        await conn.close()
    return commits


async def _connect(dsn: str, timeout: float = 30.0) -> psycopg.AsyncConnection[Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run_writers(
    dsn: str, table: str, writers: int, transactions: int, *, seed: int = 1, pace: float = 0.0
) -> int:
    """`writers` concurrent writers; `pace` seconds between one writer's transactions."""
    results = await asyncio.gather(
        *(writer(dsn, table, w, transactions, seed=seed, pace=pace) for w in range(writers))
    )
    return sum(results)


async def expected_events(dsn: str, table: str) -> dict[str, int]:
    """key → final version, for every committed row."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql.SQL("SELECT id, v FROM {}").format(sql.Identifier(table)))
        return {str(i): int(v) for i, v in await cur.fetchall()}


async def stream_events(redis: Any, namespace: str, topic: str) -> list[tuple[str, Any]]:
    """(stream id, decoded event) for every entry of the topic stream."""
    out = []
    entries = await redis.xrange(Channels(namespace).stream(topic))
    for sid, fields in entries:
        sid_s = sid.decode() if isinstance(sid, bytes) else sid
        event = decode_event(assemble_event(topic, sid_s, fields[b"f"]))
        out.append((sid_s, event))
    return out


async def wait_stream_len(redis: Any, namespace: str, topic: str, n: int, timeout: float) -> int:
    key = Channels(namespace).stream(topic)
    deadline = time.monotonic() + timeout
    have = 0
    while time.monotonic() < deadline:
        have = await redis.xlen(key)
        if have >= n:
            return int(have)
        await asyncio.sleep(0.1)
    return int(have)


async def assert_exactly_once_in_order(
    dsn: str, redis: Any, namespace: str, table: str, timeout: float = 30.0
) -> int:
    """Wait for every committed change of `table`, then check the stream holds exactly
    them, each once, in per-row commit order. Returns the number of events."""
    final = await expected_events(dsn, table)
    total = sum(v + 1 for v in final.values())
    have = await wait_stream_len(redis, namespace, table, total, timeout)
    assert have >= total, f"stream has {have} of {total} committed changes"
    await asyncio.sleep(0.3)  # anything extra (a duplicate) would land now
    events = await stream_events(redis, namespace, table)
    ids = [sid for sid, _ in events]
    assert len(ids) == len(set(ids))
    versions: dict[str, list[int]] = defaultdict(list)
    for _, ev in events:
        assert ev.topic == table and ev.ts
        assert ev.op == ("insert" if ev.data["v"] == 0 else "update")
        versions[ev.key].append(ev.data["v"])
    assert set(versions) == set(final), "events for rows that were never committed, or missing"
    bad = {k: vs for k, vs in versions.items() if vs != list(range(final[k] + 1))}
    assert not bad, f"{len(bad)} rows out of order/duplicated/lost, e.g. {next(iter(bad.items()))}"
    assert len(events) == total
    return total
