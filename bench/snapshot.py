"""Snapshot then stream: how fast a gateway hands over a large table while it is written.

`just bench snapshot [--rows=N] [--writes=W]`. On a scratch database and Redis namespace:
a watched table of N rows (~300-byte rows), `bridge-notifier` and a `bridge-gateway` with
snapshots enabled, and a writer updating random rows at W changes/s throughout. Measured:
one WebSocket client's `"snapshot": true` subscription — time to the first `snapshot`
frame, rows/s until `subscribed` — against a plain keyset `SELECT to_jsonb(t)::text …`
in pages of 500 through psycopg in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from bridge_common import migrate
from websockets.asyncio.client import connect

from bench.report import write_section
from tests.support.infra import delete_namespace, with_database
from tests.support.processes import ServiceProcess

ADMIN_DSN = os.environ.get("BRIDGE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOPIC = "bench_snapshot"


async def _fill(dsn: str, rows: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE {TOPIC} (id bigint PRIMARY KEY, title text NOT NULL, "
            "n int NOT NULL DEFAULT 0, payload jsonb NOT NULL)"
        )
        # filled before it is watched: the snapshot is the point, not relaying the fill
        await conn.execute(
            f"INSERT INTO {TOPIC} SELECT g, 'row ' || g, 0, jsonb_build_object('note', "  # noqa: S608
            "repeat('x', 200)) FROM generate_series(1, %s::bigint) g",
            (rows,),
        )
        await conn.execute(f"VACUUM ANALYZE {TOPIC}")
        await conn.execute(f"SELECT bridge.watch('{TOPIC}')")
        await conn.execute(f"UPDATE {TOPIC} SET n = 1 WHERE id = 1")  # the topic exists


async def _writer(dsn: str, rows: int, per_s: int, stop: asyncio.Event) -> int:
    """`per_s` single-row updates per second, in transactions of 10."""
    rnd = random.Random(1)
    done = 0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        start = time.monotonic()
        while not stop.is_set():
            async with conn.transaction():
                for _ in range(10):
                    await conn.execute(
                        f"UPDATE {TOPIC} SET n = n + 1 WHERE id = %s",  # noqa: S608
                        (rnd.randint(1, rows),),
                    )
            done += 10
            ahead = done / per_s - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return done


async def _plain_select(dsn: str) -> tuple[float, float, int]:
    """(first page s, rows/s, rows) of the keyset reading the gateway does, in-process."""
    count = 0
    first = 0.0
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        after = 0
        while True:
            cur = await conn.execute(
                f"SELECT to_jsonb(t)::text, id FROM {TOPIC} t WHERE id > %s "  # noqa: S608
                "ORDER BY id LIMIT 500",
                (after,),
            )
            page = await cur.fetchall()
            if not first:
                first = time.perf_counter() - t0
            count += len(page)
            if len(page) < 500:
                break
            after = page[-1][1]
        elapsed = time.perf_counter() - t0
    return first, count / elapsed, count


async def _ws_snapshot(gateway: ServiceProcess) -> tuple[float, float, int]:
    url = gateway.url.replace("http://", "ws://") + "/ws"
    count = 0
    first = 0.0
    async with connect(url, max_size=None) as ws:
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "subscribe", "topic": TOPIC, "snapshot": True}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if msg["type"] == "snapshot":
                if not first:
                    first = time.perf_counter() - t0
                count += len(msg["rows"])
            elif msg["type"] == "subscribed":
                break
            elif msg["type"] == "error":
                raise RuntimeError(f"snapshot failed: {msg}")
        elapsed = time.perf_counter() - t0
    return first, count / elapsed, count


async def run(args: argparse.Namespace) -> str:
    name = f"bench_snapshot_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(ADMIN_DSN, name)
    env = {
        "BRIDGE_SOURCE_DSN": dsn,
        "BRIDGE_SNAPSHOT_DSN": dsn,
        "BRIDGE_SNAPSHOT_MAX_ROWS": str(max(args.rows, 10_000)),
        "BRIDGE_REDIS_URL": REDIS_URL,
        "BRIDGE_NAMESPACE": name,
        "BRIDGE_AUTH": "disabled",
        "BRIDGE_LOG_LEVEL": "warning",
    }
    procs: list[ServiceProcess] = []
    stop = asyncio.Event()
    try:
        await migrate.apply(dsn, "source")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            print(f"filling {args.rows:,} rows ...", flush=True)
            await _fill(dsn, args.rows)
            procs.append(ServiceProcess("notifier", env, work).start())
            gateway = ServiceProcess("gateway", env, work).start()
            procs.append(gateway)
            writer = asyncio.create_task(_writer(dsn, args.rows, args.writes, stop))
            await asyncio.sleep(2)  # the writer at its pace
            print("snapshots under writes ...", flush=True)
            ws_first, ws_rate, ws_rows = await _ws_snapshot(gateway)
            pg_first, pg_rate, pg_rows = await _plain_select(dsn)
            stop.set()
            writes = await writer
    finally:
        stop.set()
        for p in procs:
            p.stop()
        delete_namespace(REDIS_URL, name)
        async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [
        ("what", "time to first rows", "rows/s", "rows"),
        ("---", "---", "---", "---"),
        (
            "WebSocket `snapshot: true` through the gateway",
            f"{ws_first * 1000:,.0f} ms",
            f"{ws_rate:,.0f}",
            f"{ws_rows:,}",
        ),
        (
            "plain keyset `SELECT` (pages of 500) through psycopg",
            f"{pg_first * 1000:,.0f} ms",
            f"{pg_rate:,.0f}",
            f"{pg_rows:,}",
        ),
    ]
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    return f"""## Snapshot then stream

`just bench snapshot --rows={args.rows} --writes={args.writes}` — a watched table of
{args.rows:,} rows (~300 bytes each) while a writer updates random rows at about
{args.writes:,}/s ({writes:,} updates in all); one WebSocket client subscribes with
`"snapshot": true` (rows, then `subscribed`), then the same keyset reading runs in-process.
PostgreSQL, Redis, the services and the client on the same 2-core machine, shared with
other engineers' work (load average {load} at the end of the run).

{table}

The gateway's rate is {ws_rate / pg_rate * 100:.0f} % of the plain `SELECT`. It reads
the same pages (plus each row's event key), frames ~256 KiB messages the client must parse,
and — with a filter, not here — decodes each row once to evaluate it as it evaluates
events. Not measured yet: the live-event p99 of other clients during snapshots.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench snapshot")
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the table")
    parser.add_argument("--writes", type=int, default=1000, help="updates per second")
    parser.add_argument("--no-write", action="store_true", help="print, do not record")
    args = parser.parse_args(argv)
    body = asyncio.run(run(args))
    print(body)
    if not args.no_write:
        write_section("snapshot", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
