"""Resume from the PostgreSQL history tier: how fast, how soon, and what it costs on disk.

`just bench history [--events=N]`. On a scratch database and Redis namespace: N rows are
committed into a watched table and relayed by `bridge-notifier` (so they are in the
history and in Redis), the topic's Redis stream is deleted (a Redis data loss as the
gateway sees it), and one WebSocket client subscribes to a `bridge-gateway` with `since`
= the first event's id: every later event must come from PostgreSQL. Measured: time to
the first replayed event, events/s over the whole replay, and the history's bytes per
event (heap + TOAST + index of every partition).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis.asyncio as aredis
from bridge_common import migrate
from bridge_common.channels import Channels
from websockets.asyncio.client import connect

from bench.report import write_section
from tests.support.infra import delete_namespace, with_database
from tests.support.processes import ServiceProcess

ADMIN_DSN = os.environ.get("BRIDGE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOPIC = "bench_history"


async def _fill(dsn: str, events: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE {TOPIC} (id bigint PRIMARY KEY, title text NOT NULL, "
            "payload jsonb NOT NULL)"
        )
        await conn.execute(f"SELECT bridge.watch('{TOPIC}')")
        for lo in range(0, events, 1000):
            await conn.execute(
                f"INSERT INTO {TOPIC} SELECT g, 'row ' || g, jsonb_build_object('note', "  # noqa: S608
                "repeat('x', 200)) FROM generate_series(%s::bigint, %s::bigint) g",
                (lo, min(events, lo + 1000) - 1),
            )


async def _wait_history(dsn: str, events: int, timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT count(*) FROM bridge.history WHERE topic = %s", (TOPIC,)
            )
            row = await cur.fetchone()
            if row and row[0] >= events:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay stalled at {row[0] if row else 0} of {events}")
            await asyncio.sleep(0.2)
        cur = await conn.execute(
            "SELECT ms || '-' || n FROM bridge.history WHERE topic = %s ORDER BY ms, n LIMIT 1",
            (TOPIC,),
        )
        first = await cur.fetchone()
        await conn.execute("VACUUM ANALYZE bridge.history")
        cur = await conn.execute(
            "SELECT (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'bridge.history'::regclass), (SELECT count(*) FROM bridge.history)"
        )
        size = await cur.fetchone()
    assert first is not None and size is not None
    return [str(first[0]), str(float(size[0]) / max(1, int(size[1])))]


async def run(args: argparse.Namespace) -> str:
    name = f"bench_history_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(ADMIN_DSN, name)
    env = {
        "BRIDGE_SOURCE_DSN": dsn,
        "BRIDGE_REDIS_URL": REDIS_URL,
        "BRIDGE_NAMESPACE": name,
        "BRIDGE_AUTH": "disabled",
        "BRIDGE_LOG_LEVEL": "warning",
        "BRIDGE_STREAM_MAXLEN": str(args.events * 2),
    }
    procs: list[ServiceProcess] = []
    try:
        await migrate.apply(dsn, "source")
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            print(f"committing and relaying {args.events:,} events ...", flush=True)
            await _fill(dsn, args.events)
            procs.append(ServiceProcess("notifier", env, work).start())
            first_id, per_event = await _wait_history(dsn, args.events)
            gateway = ServiceProcess("gateway", env, work).start()
            procs.append(gateway)
            r = aredis.Redis.from_url(REDIS_URL)
            await r.delete(Channels(name).stream(TOPIC))  # Redis forgot the topic
            await r.aclose()
            print("resuming from the history ...", flush=True)
            want = args.events - 1
            got = 0
            url = gateway.url.replace("http://", "ws://") + "/ws"
            async with connect(url, max_size=None) as ws:
                t0 = time.perf_counter()
                await ws.send(json.dumps({"type": "subscribe", "topic": TOPIC, "since": first_id}))
                first_at = None
                while got < want:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if msg["type"] == "event":
                        got += 1
                        if first_at is None:
                            first_at = time.perf_counter() - t0
                    elif msg["type"] == "error":
                        raise RuntimeError(f"resume failed: {msg}")
                elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            p.stop()
        delete_namespace(REDIS_URL, name)
        async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rate = got / elapsed
    rows = [
        ("what", "result"),
        ("---", "---"),
        ("time to the first replayed event", f"{(first_at or 0) * 1000:,.0f} ms"),
        (
            f"replay from the history tier ({want:,} events, one client)",
            f"{rate:,.0f} events/s ({elapsed:.1f} s)",
        ),
        (
            "history storage per event (heap, TOAST and primary-key index of every partition)",
            f"{float(per_event):,.0f} bytes",
        ),
    ]
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    return f"""## History (resume from PostgreSQL)

`just bench history --events={args.events}` — {args.events:,} events (~300-byte rows)
committed and relayed by `bridge-notifier` into the history and Redis; the topic's Redis
stream then deleted, and one WebSocket client resumes with `since` = the first event: all
{want:,} later events come from `bridge.history` through the gateway's pool. PostgreSQL,
Redis, the services and the client on the same 2-core machine, shared with other work
(load average {load} at the end of the run).

{table}

The replay reads 500 events per query (`BRIDGE_GATEWAY_REPLAY_BATCH`) and writes them to
the client with back-pressure: the rate is that of one client, PostgreSQL, the gateway and
the client sharing two cores.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench history")
    parser.add_argument("--events", type=int, default=100_000, help="events to resume over")
    parser.add_argument("--no-write", action="store_true", help="print, do not record")
    args = parser.parse_args(argv)
    body = asyncio.run(run(args))
    print(body)
    if not args.no_write:
        write_section("history", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
