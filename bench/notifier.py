"""How fast the notifier relays, and what latency it adds — beside the raw INSERT rate.

`just bench notifier [--rows=N] [--rate=R] [--seconds=S] [--repeats=K] [--no-write]`.
One run, on a scratch database and Redis namespace:

1. reference: the raw rate of INSERT into `bridge.outbox` (multi-row statements, one
   commit per 1000 rows), and of INSERT into a watched table (capture trigger → outbox);
2. relay rate: pre-fill the outbox with N rows (notifier stopped), start `bridge-notifier`
   and time the drain, from the first to the last stream entry (Redis stamps the ids);
3. latency, K times: one row per transaction at R rows/s for S seconds; for each row,
   commit acknowledged → its event arriving on the topic's live channel; beside the
   floors of the two hops without the notifier (a committed `pg_notify` at a plain LISTEN
   connection, a Redis PUBLISH at the same subscriber);
4. sustained bulk writer: 1000-row INSERT statements into the watched table, as fast as
   PostgreSQL takes them, for B seconds (`--bulk-seconds`), the outbox backlog sampled
   every second — flat means the relay keeps up.

The relay writes every event into the PostgreSQL history as well (issue #13), so every
relay figure here includes that write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import redis
import redis.asyncio as aredis
from bridge_common import migrate
from bridge_common.channels import Channels
from bridge_common.events import decode_event

from bench.report import write_section
from tests.support.infra import with_database

ADMIN_DSN = os.environ.get("BRIDGE_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PAYLOAD = "x" * 200  # a ~300-byte row, like an intent


async def _setup(dsn: str) -> None:
    await migrate.apply(dsn, "source")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE bench_events (id bigint PRIMARY KEY, title text NOT NULL,"
            " status text NOT NULL, payload jsonb NOT NULL)"
        )
        await conn.execute("SELECT bridge.watch('bench_events')")


async def _insert_rate(dsn: str, rows: int, direct: bool, start_id: int) -> float:
    """Rows/s of multi-row INSERTs (1000 a statement, one commit each)."""
    if direct:
        stmt = (
            "INSERT INTO bridge.outbox (topic, op, key, payload) SELECT 'raw', 'insert', g::text,"
            " jsonb_build_object('id', g, 'title', 'row ' || g, 'status', 'pending',"
            " 'payload', jsonb_build_object('note', %s::text))"
            " FROM generate_series(%s::bigint, %s::bigint) g"
        )
    else:
        stmt = (
            "INSERT INTO bench_events (id, title, status, payload) SELECT g, 'row ' || g,"
            " 'pending', jsonb_build_object('note', %s::text)"
            " FROM generate_series(%s::bigint, %s::bigint) g"
        )
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        t0 = time.perf_counter()
        done = 0
        while done < rows:
            n = min(1000, rows - done)
            lo = start_id + done
            await conn.execute(stmt, (PAYLOAD, lo, lo + n - 1))
            await conn.commit()
            done += n
        return rows / (time.perf_counter() - t0)


class Notifier:
    """`bridge-notifier` as a subprocess, as operators run it."""

    def __init__(self, dsn: str, namespace: str, workdir: Path, maxlen: int) -> None:
        self.port = _free_port()
        self.log = open(workdir / "notifier.log", "ab")  # noqa: SIM115
        env = {
            **os.environ,
            "BRIDGE_SOURCE_DSN": dsn,
            "BRIDGE_REDIS_URL": REDIS_URL,
            "BRIDGE_NAMESPACE": namespace,
            "BRIDGE_NOTIFIER_PORT": str(self.port),
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_LOG_LEVEL": "warning",
            "BRIDGE_STREAM_MAXLEN": str(maxlen),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge_notifier"], env=env, stdout=self.log, stderr=self.log
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("notifier not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _id_ms(stream_id: bytes) -> int:
    return int(stream_id.split(b"-")[0])


async def _relay_rate(r: aredis.Redis, ch: Channels, rows: int, notifier: Notifier) -> float:
    """Pre-filled outbox of `rows`; events/s from the first to the last stream entry."""
    key = ch.stream("bench_events")
    deadline = time.monotonic() + 300
    while await r.xlen(key) < rows:
        if time.monotonic() > deadline or notifier.proc.poll() is not None:
            raise RuntimeError(f"relay stalled at {await r.xlen(key)} of {rows}")
        await asyncio.sleep(0.05)
    [(first, _)] = await r.xrange(key, count=1)
    [(last, _)] = await r.xrevrange(key, count=1)
    span = max(1, _id_ms(last) - _id_ms(first)) / 1000
    return rows / span


async def _bulk(dsn: str, seconds: float, start_id: int) -> dict[str, float]:
    """1000-row INSERTs into the watched table, back to back, for `seconds`; the outbox
    backlog sampled every second on another connection."""
    stmt = (
        "INSERT INTO bench_events (id, title, status, payload) SELECT g, 'row ' || g,"
        " 'pending', jsonb_build_object('note', %s::text)"
        " FROM generate_series(%s::bigint, %s::bigint) g"
    )
    samples: list[tuple[float, int]] = []
    written = 0
    stop = asyncio.Event()

    async def sample() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            t0 = time.perf_counter()
            while not stop.is_set():
                cur = await conn.execute("SELECT count(*) FROM bridge.outbox")
                row = await cur.fetchone()
                samples.append((time.perf_counter() - t0, int(row[0]) if row else 0))
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    pass

    sampler = asyncio.create_task(sample())
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            lo = start_id + written
            await conn.execute(stmt, (PAYLOAD, lo, lo + 999))
            written += 1000
        elapsed = time.perf_counter() - t0
    stop.set()
    await sampler
    backlogs = [b for _, b in samples]
    # least-squares slope of the backlog over the second half of the run (rows/s)
    half = [(t, b) for t, b in samples if t >= elapsed / 2] or samples
    n = len(half)
    mt = sum(t for t, _ in half) / n
    mb = sum(b for _, b in half) / n
    var = sum((t - mt) ** 2 for t, _ in half) or 1.0
    slope = sum((t - mt) * (b - mb) for t, b in half) / var
    return {
        "rate": written / elapsed,
        "seconds": elapsed,
        "rows": float(written),
        "max": float(max(backlogs, default=0)),
        "end": float(backlogs[-1] if backlogs else 0),
        "median": float(statistics.median(backlogs) if backlogs else 0),
        "slope": slope,
    }


async def _history_bytes(dsn: str) -> float:
    """Bytes the history takes per event (heap, TOAST and index of every partition)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE bridge.history")
        cur = await conn.execute(
            "SELECT (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'bridge.history'::regclass), (SELECT count(*) FROM bridge.history)"
        )
        row = await cur.fetchone()
    size, count = row or (0, 0)
    return float(size or 0) / max(1, int(count or 0))


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _paced(rate: float, seconds: float, fn) -> None:  # noqa: ANN001
    """Call `fn(i)` `rate` times a second for `seconds` (catching up if it falls behind)."""
    n = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await fn(i)


async def _latency(
    ch: Channels, dsn: str, rate: float, seconds: float, notifier: Notifier, run_no: int
) -> tuple[list[float], list[float], list[float]]:
    """(through the notifier, Redis hop alone, PostgreSQL NOTIFY alone) latencies in ms."""
    arrived: dict[str, float] = {}
    committed: dict[str, float] = {}
    # The subscriber runs in its own thread with its own connection, so the writer's event
    # loop never delays an arrival stamp (perf_counter is one clock for both threads).
    sub = redis.Redis.from_url(REDIS_URL)
    pubsub = sub.pubsub()
    pubsub.subscribe(ch.live("bench_events"), ch.live("bench_floor"))
    done = threading.Event()

    def listen() -> None:
        while not done.is_set():
            msg = pubsub.get_message(timeout=0.2)
            if msg is None or msg["type"] != "message":
                continue
            now = time.perf_counter()
            data = msg["data"]
            if data.startswith(b"floor:"):
                arrived[data.decode()] = now
            else:
                # the live channel carries `event\nmeta` (snapshots): decode the event
                arrived[decode_event(data.partition(b"\n")[0]).key] = now

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    # PostgreSQL alone: commit → a plain LISTEN connection, the floor under the relay
    pg_listener = psycopg.connect(dsn, autocommit=True)
    pg_listener.execute("LISTEN bench_pgfloor")

    def listen_pg() -> None:
        while not done.is_set():
            for n in pg_listener.notifies(timeout=0.2):
                arrived[n.payload] = time.perf_counter()

    pg_thread = threading.Thread(target=listen_pg, daemon=True)
    pg_thread.start()
    pub = aredis.Redis.from_url(REDIS_URL)
    try:
        await asyncio.to_thread(notifier.wait_ready)
        await asyncio.sleep(1.0)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            base = 10_000_000_000 + run_no * 100_000_000

            async def write(i: int) -> None:
                await conn.execute(
                    "INSERT INTO bench_events (id, title, status, payload)"
                    " VALUES (%s, 'latency', 'pending', '{}')",
                    (base + i,),
                )
                committed[str(base + i)] = time.perf_counter()

            await _paced(rate, seconds, write)

            async def floor(i: int) -> None:
                k = f"floor:{i}"
                committed[k] = time.perf_counter()
                await pub.publish(ch.live("bench_floor"), k)

            await _paced(rate, min(seconds, 5.0), floor)

            async def pg_floor(i: int) -> None:
                await conn.execute("SELECT pg_notify('bench_pgfloor', %s)", (f"pg:{i}",))
                committed[f"pg:{i}"] = time.perf_counter()

            await _paced(rate, min(seconds, 5.0), pg_floor)
        deadline = time.monotonic() + 10
        while len(arrived) < len(committed) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await pub.aclose()
        done.set()
        listener.join(5)
        pg_thread.join(5)
        pg_listener.close()
        pubsub.close()
        sub.close()
    lost = [k for k in committed if k not in arrived]
    if lost:
        raise RuntimeError(f"{len(lost)} rows never arrived")

    def ms(prefix: str) -> list[float]:
        return [(arrived[k] - t) * 1000 for k, t in committed.items() if k.startswith(prefix)]

    return ms("1"), ms("floor:"), ms("pg:")


async def run(args: argparse.Namespace) -> str:
    name = f"bench_notifier_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
        cur = await admin.execute("SHOW track_commit_timestamp")
        commit_ts = (await cur.fetchone() or ("off",))[0]
    dsn = with_database(ADMIN_DSN, name)
    ch = Channels(name)
    r = aredis.Redis.from_url(REDIS_URL)
    try:
        await _setup(dsn)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            print(f"raw INSERT into bridge.outbox, {args.rows} rows ...", flush=True)
            raw = await _insert_rate(dsn, args.rows, direct=True, start_id=0)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("TRUNCATE bridge.outbox")
            print(f"INSERT into a watched table (pre-fill), {args.rows} rows ...", flush=True)
            watched = await _insert_rate(dsn, args.rows, direct=False, start_id=0)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("VACUUM ANALYZE bridge.outbox")
            print("relaying the pre-filled outbox ...", flush=True)
            notifier = Notifier(dsn, ch.namespace, work, maxlen=args.rows * 2)
            try:
                relay = await _relay_rate(r, ch, args.rows, notifier)
                print(f"latency at {args.rate:g} rows/s for {args.seconds:g}s ...", flush=True)
                lat, floor, pg, run_p99 = [], [], [], []
                for k in range(args.repeats):
                    one, f, g = await _latency(ch, dsn, args.rate, args.seconds, notifier, k)
                    if k == 0:
                        settle = int(args.rate * 2)  # the first 2 s follow the drained backlog
                        steady = one[settle:] or one
                    lat += one
                    floor += f
                    pg += g
                    run_p99.append(_pct(one, 0.99))
                print(f"sustained bulk writer for {args.bulk_seconds:g}s ...", flush=True)
                bulk = await _bulk(dsn, args.bulk_seconds, start_id=10 * args.rows)
                per_event = await _history_bytes(dsn)
            finally:
                notifier.stop()
    finally:
        for pattern in (f"{name}:*", f"{{{name}}}:*"):
            keys = [k async for k in r.scan_iter(match=pattern, count=1000)]
            if keys:
                await r.delete(*keys)
        await r.aclose()
        async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    p50, p99 = statistics.median(lat), _pct(lat, 0.99)
    s50, s99 = statistics.median(steady), _pct(steady, 0.99)
    f50, f99 = statistics.median(floor), _pct(floor, 0.99)
    g50, g99 = statistics.median(pg), _pct(pg, 0.99)
    rows = [
        ("what", "result", "target"),
        ("---", "---", "---"),
        (
            "raw `INSERT` into `bridge.outbox` (1000-row statements, commit each)",
            f"{raw:,.0f} rows/s",
            "reference",
        ),
        (
            "`INSERT` into a watched table (capture trigger → outbox)",
            f"{watched:,.0f} rows/s",
            "reference",
        ),
        (
            f"**relay from a pre-filled outbox** ({args.rows:,} rows → stream + live channel)",
            f"**{relay:,.0f} events/s**",
            "≥ 20 000",
        ),
        (
            f"commit → live event at {args.rate:g} rows/s, p50 / p99 ({len(lat):,} rows, "
            f"{args.repeats} runs of {args.seconds:g} s; p99 of each run: "
            + ", ".join(f"{x:.1f}" for x in run_p99)
            + " ms)",
            f"**{p50:.2f} / {p99:.2f} ms**",
            "≤ 5 ms p99 added",
        ),
        (
            "… first run, leaving out its first 2 s (right after the drain), p50 / p99",
            f"{s50:.2f} / {s99:.2f} ms",
            "",
        ),
        (
            f"sustained bulk writer, {bulk['seconds']:.0f} s of 1000-row `INSERT`s into the "
            f"watched table ({bulk['rows']:,.0f} rows at {bulk['rate']:,.0f} rows/s): outbox "
            f"backlog median / max / at the end; growth over the second half",
            f"{bulk['median']:,.0f} / {bulk['max']:,.0f} / {bulk['end']:,.0f} rows; "
            f"**{bulk['slope']:+,.0f} rows/s**",
            "flat",
        ),
        (
            "history storage per event (~300-byte rows: heap + index, every partition)",
            f"{per_event:,.0f} bytes",
            "—",
        ),
        (
            "floor: PostgreSQL alone, commit → a plain LISTEN connection, p50 / p99",
            f"{g50:.2f} / {g99:.2f} ms",
            "—",
        ),
        (
            "floor: Redis alone, PUBLISH → the same subscriber, p50 / p99",
            f"{f50:.2f} / {f99:.2f} ms",
            "—",
        ),
    ]
    table = "\n".join("| " + " | ".join(r) + " |" for r in rows)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    verdict_rate = (
        f"**Relay: target met** ({relay / 20_000:.1f}× the 20 000 events/s asked for; "
        f"{relay / watched:.2f}× the rate the capture trigger can fill the outbox at)."
        if relay >= 20_000
        else f"**Relay: below target** ({relay:,.0f} < 20 000 events/s on this run)."
    )
    keeps_up = bulk["slope"] <= 0.02 * bulk["rate"] and bulk["end"] <= max(
        20_000, 0.1 * bulk["rows"]
    )
    verdict_bulk = (
        f"**Bulk writer: the relay keeps up** (backlog flat: {bulk['slope']:+,.0f} rows/s "
        f"against {bulk['rate']:,.0f} rows/s written)."
        if keeps_up
        else f"**Bulk writer: the relay falls behind** (backlog grows {bulk['slope']:+,.0f} "
        f"rows/s while the writer adds {bulk['rate']:,.0f} rows/s: the relay drains "
        f"≈ {bulk['rate'] - bulk['slope']:,.0f} rows/s under this load)."
    )
    verdict_latency = (
        f"**Latency: target met** (p99 {p99:.2f} ms)."
        if p99 <= 5.0
        else (
            f"**Latency: p99 above the 5 ms target on this run** ({p99:.2f} ms; "
            f"p50 {p50:.2f} ms). At this rate nearly "
            "every commit wakes the relay on its own, and each wake-up is a round trip to "
            "PostgreSQL (prune + read, ≈ 0.2-0.3 ms) and one to Redis (the script, "
            "≈ 0.15 ms), plus Python around them: the relay is busy about half the time, "
            "and a commit that lands during a cycle waits for it and the next one — with "
            "three processes sharing two cores, that queueing is the tail."
        )
    )
    return f"""## Notifier

`just bench notifier --rows={args.rows} --rate={args.rate:g} --seconds={args.seconds:g}
--repeats={args.repeats} --bulk-seconds={args.bulk_seconds:g}`
(default size; the full-size run is `--rows=1000000 --seconds=60`). PostgreSQL 15 and
Redis 7 on the same 2-core machine, shared with other work (load average {load} at the
end of the run); `track_commit_timestamp = {commit_ts}`; batch size 1000; ~300-byte rows;
one topic.

{table}

{verdict_rate} {verdict_bulk} {verdict_latency}

The same notifier process relays the backlog and then serves the latency run (so the
latency includes the aftermath of a drained backlog). Latency is measured from the
writer's commit acknowledgement to the subscriber receiving the event (both in the
benchmark process, one clock), so it includes NOTIFY delivery, the outbox read, the
publish script and pub/sub delivery. The floor rows are what the two hops cost on this
machine without the notifier: a `pg_notify` committed by the writer arriving at a plain
LISTEN connection, and a plain PUBLISH arriving at the same subscriber. The
relay rate is the span between the first and the last event id (the relay stamps an id
with its clock when it assigns it, just before the history write and the publish). Every
relayed event is written to the PostgreSQL history in the same transaction that deletes
it from the outbox.

Against the machine of the day: the relay ran at {relay / raw:.2f}× this run's raw outbox
INSERT rate. Before the history tier (recorded 2026-11-28 on a quieter machine) it ran at
82,679 events/s = 0.36× that run's raw INSERT rate (229,889 rows/s). On a machine this
loaded, the ratio moves by ±0.1 between phases of one run, so it bounds the history's
cost rather than measuring it. The relay is one connection: the move statement (delete +
history insert + next read) is its bottleneck, PostgreSQL-side; under the bulk writer it
shares the two cores with the writer's backend and the capture trigger.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench notifier")
    parser.add_argument("--rows", type=int, default=200_000, help="pre-filled outbox rows")
    parser.add_argument("--rate", type=float, default=1000.0, help="rows/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run length")
    parser.add_argument("--repeats", type=int, default=3, help="latency runs (pooled)")
    parser.add_argument(
        "--bulk-seconds", type=float, default=60.0, help="sustained bulk writer run length"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not record")
    args = parser.parse_args(argv)
    body = asyncio.run(run(args))
    print(body)
    if not args.no_write:
        write_section("notifier", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
