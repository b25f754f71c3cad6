"""Metrics API latency over millions of audit rows: overview and a 24 h timeline.

`just bench metrics_api` (default 2 000 000 rows over 7 days; `--rows 10000000` for the
issue's full size). Rows AND their per-minute rollup are generated with `generate_series`
straight into the target tables of a scratch database; 100 000 intents go into the source
table. The real `bridge-metrics-api` process then answers closed-loop load from a few
concurrent HTTP clients, one endpoint at a time. In the same run, as references: `/healthz`
on the same process (the HTTP floor) and the 24 h timeline computed from the raw rows
(`GROUP BY` over `audit_logs_ts`, what the aggregate saves).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from bench.report import write_section
from tests.support import infra

ACTIONS = [
    "intent.created",
    "intent.updated",
    "intent.approved",
    "intent.submitted",
    "intent.completed",
    "intent.failed",
    "intent.corrected",
    "intent.viewed",
]


def log(msg: str) -> None:
    print(f"[metrics_api] {msg}", flush=True)


def generate(dsn: str, rows: int, days: int, intents: int) -> dict[str, float]:
    """Partitions, rows, rollup, intents; returns seconds per step."""
    took: dict[str, float] = {}
    end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(days=days)
    with psycopg.connect(dsn, autocommit=True) as conn:
        d = start.date()
        while d <= end.date():
            lo = datetime(d.year, d.month, d.day, tzinfo=UTC)
            hi = lo + timedelta(days=1)
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS audit_logs_ts_b{d:%Y%m%d} PARTITION OF audit_logs_ts "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
            d += timedelta(days=1)
        t = time.perf_counter()
        # evenly spread over the span; 90 % info/debug, then warning, error, critical
        conn.execute(
            """
            INSERT INTO audit_logs_ts (source_id, created_at, intent_id, actor, action, severity,
                                       details, ingested_at)
            SELECT g,
                   %(start)s + (%(end)s - %(start)s) * (g::float8 / %(rows)s),
                   NULL,
                   'actor-' || (g %% 50),
                   (%(actions)s::text[])[1 + g %% 8],
                   CASE WHEN g %% 100 < 20 THEN 'debug' WHEN g %% 100 < 90 THEN 'info'
                        WHEN g %% 100 < 96 THEN 'warning' WHEN g %% 100 < 99 THEN 'error'
                        ELSE 'critical' END,
                   jsonb_build_object('n', g),
                   now()
            FROM generate_series(1, %(rows)s) AS g
            """,
            {"start": start, "end": end - timedelta(seconds=1), "rows": rows, "actions": ACTIONS},
        )
        took["rows"] = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute(
            """
            INSERT INTO audit_logs_1m (bucket, action, severity, events)
            SELECT date_trunc('minute', created_at), action, severity, count(*)
            FROM audit_logs_ts GROUP BY 1, 2, 3
            """
        )
        took["rollup"] = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute(
            """
            INSERT INTO intents (title, status, created_at, updated_at)
            SELECT 'intent ' || g,
                   (ARRAY['pending','done','done','done','failed','corrected'])[1 + g %% 6],
                   now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval
            FROM generate_series(1, %(n)s) AS g
            """,
            {"n": intents},
        )
        took["intents"] = time.perf_counter() - t
        t = time.perf_counter()
        conn.execute("VACUUM ANALYZE audit_logs_ts")
        conn.execute("VACUUM ANALYZE audit_logs_1m")
        conn.execute("VACUUM ANALYZE intents")
        took["analyze"] = time.perf_counter() - t
        rollup_rows = conn.execute("SELECT count(*) FROM audit_logs_1m").fetchone()
        took["rollup_rows"] = float(rollup_rows[0] if rollup_rows else 0)
    return took


async def load(url: Callable[[], str], seconds: float, concurrency: int) -> dict[str, float]:
    """Closed loop: `concurrency` clients each send the next request when one returns."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(5):  # warm up: connections, prepared statements
            await client.get(url())
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t = time.perf_counter()
                resp = await client.get(url())
                latencies.append(time.perf_counter() - t)
                if resp.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50": 1000 * statistics.median(latencies),
        "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max": 1000 * latencies[-1],
    }


def day_range() -> str:
    """The dashboard's 24 h window, ending now: each request asks for a slightly later one."""
    until = datetime.now(UTC)
    since = until - timedelta(hours=24)
    return f"since={since.isoformat()}&until={until.isoformat()}".replace("+", "%2B")


def serve_and_load(
    args: argparse.Namespace, dsn: str, redis_url: str, extra: dict[str, str]
) -> list[tuple[str, dict[str, float]]] | None:
    port = infra.free_port()
    namespace = infra.unique_name("bench", "mapi")
    env = {
        **os.environ,
        "BRIDGE_SOURCE_DSN": dsn,
        "BRIDGE_TARGET_DSN": dsn,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_METRICS_API_PORT": str(port),
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_LOG_LEVEL": "warning",
        **extra,
    }
    base = f"http://127.0.0.1:{port}"
    results = []
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge_metrics_api"], env=env, stdout=out, stderr=out
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(base + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    out.seek(0)
                    print(out.read().decode()[-3000:])
                    return None
                time.sleep(0.2)
            targets: list[tuple[str, Callable[[], str]]] = [
                ("overview", lambda: base + "/api/v1/dashboard/overview"),
                (
                    "timeline 24 h, bucket=1m",
                    lambda: f"{base}/api/v1/dashboard/timeline?bucket=1m&{day_range()}",
                ),
                (
                    "timeline 24 h, bucket=15m",
                    lambda: f"{base}/api/v1/dashboard/timeline?bucket=15m&{day_range()}",
                ),
                (
                    "corrections 24 h, limit=20",
                    lambda: f"{base}/api/v1/dashboard/corrections?limit=20&{day_range()}",
                ),
                ("reference: /healthz (HTTP floor)", lambda: base + "/healthz"),
            ]
            for label, url in targets:
                r = asyncio.run(load(url, args.seconds, args.concurrency))
                log(
                    f"{label}: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                    f"{r['rps']:.0f} req/s, {r['errors']} errors"
                )
                results.append((label, r))
        finally:
            proc.terminate()
            proc.wait(15)
    return results


def raw_scan_reference(dsn: str, repeat: int) -> dict[str, float]:
    """The same 24 h per-minute timeline computed from the raw rows."""
    times = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(repeat):
            t = time.perf_counter()
            conn.execute(
                """
                SELECT date_trunc('minute', created_at), severity, count(*)
                FROM audit_logs_ts WHERE created_at >= now() - interval '24 hours'
                GROUP BY 1, 2 ORDER BY 1
                """
            ).fetchall()
            times.append(time.perf_counter() - t)
    times.sort()
    return {"p50": 1000 * statistics.median(times), "max": 1000 * times[-1], "n": repeat}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="just bench metrics_api")
    parser.add_argument("--rows", type=int, default=2_000_000, help="audit rows (10000000: full)")
    parser.add_argument("--days", type=int, default=7, help="span the rows cover")
    parser.add_argument("--intents", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="load per endpoint")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--db", help="reuse a database kept by --keep (skips generation)")
    parser.add_argument("--no-write", action="store_true", help="do not update the doc")
    args = parser.parse_args(argv)

    with infra.postgres_admin_dsn() as (admin, why):
        if admin is None:
            print(f"metrics_api bench: {why}")
            return 2
        with infra.redis_url() as (redis_url, why_r):
            if redis_url is None:
                print(f"metrics_api bench: {why_r}")
                return 2
            if args.db:
                return run(args, infra.with_database(admin, args.db), redis_url)
            name = infra.unique_name("bench", "metrics_api")
            dsn = infra.create_database(admin, name)
            try:
                return run(args, dsn, redis_url)
            finally:
                if not args.keep:
                    infra.drop_database(admin, name)
                else:
                    log(f"kept database {name}")


def run(args: argparse.Namespace, dsn: str, redis_url: str) -> int:
    from bridge_common import migrate

    async def schema() -> None:
        await migrate.apply(dsn, "source")
        await migrate.apply(dsn, "target")

    if args.db:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM audit_logs_ts), (SELECT count(*) FROM audit_logs_1m)"
            ).fetchone()
        assert row is not None
        args.rows = int(row[0])
        took = {"rows": 0.0, "rollup": 0.0, "analyze": 0.0, "rollup_rows": float(row[1])}
        log(f"reusing {args.db}: {args.rows:,} rows (its data ends when it was generated)")
    else:
        asyncio.run(schema())
        log(f"generating {args.rows:,} audit rows over {args.days} days …")
        took = generate(dsn, args.rows, args.days, args.intents)
    log(
        f"rows {took['rows']:.1f}s, rollup {took['rollup']:.1f}s "
        f"({int(took['rollup_rows']):,} rollup rows), analyze {took['analyze']:.1f}s"
    )
    load_before = os.getloadavg()[0]
    runs = []
    for label, extra in (
        ("caches on (defaults)", {}),
        ("caches off", {"BRIDGE_METRICS_CACHE_TTL": "0", "BRIDGE_METRICS_BUCKET_CACHE_TTL": "0"}),
    ):
        log(f"server with {label}")
        results = serve_and_load(args, dsn, redis_url, extra)
        if results is None:
            return 1
        runs.append((label, results))
    load_after = os.getloadavg()[0]
    ref = raw_scan_reference(dsn, 3)
    log(f"reference raw-row 24 h timeline: p50 {ref['p50']:.0f} ms")

    rows_txt = f"{args.rows:,}".replace(",", " ")
    lines = [
        "## Metrics API",
        "",
        f"`just bench metrics_api{' --rows ' + str(args.rows) if args.rows != 2_000_000 else ''}`"
        f" — **{rows_txt} audit rows** over {args.days} days "
        f"({int(took['rollup_rows']):,} per-minute rollup rows), {args.intents:,} intents; "
        f"the real `bridge-metrics-api` process (one uvicorn worker), closed-loop load from "
        f"{args.concurrency} concurrent HTTP clients for {args.seconds:g} s per endpoint, load "
        "generator on the same 2 cores. Target: p99 ≤ 50 ms for overview and the 24 h timeline.",
        "",
        "Each request asks for the 24 h ending *now* (as the dashboard does). Caches on: "
        "the overview is computed at most once a second for all callers, and timeline "
        "buckets that ended over 2 minutes ago are reused for 30 s (`BRIDGE_METRICS_CACHE_TTL`, "
        "`BRIDGE_METRICS_BUCKET_CACHE_TTL`); caches off: every request runs its SQL.",
        "",
        "| server | request | p50 ms | p99 ms | max ms | requests/s | errors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for server, results in runs:
        for label, r in results:
            lines.append(
                f"| {server} | {label} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} "
                f"| {r['rps']:.0f} | {r['errors']} |"
            )
    lines += [
        f"| reference | 24 h per-minute timeline as `GROUP BY` over the raw rows (one "
        f"connection, {ref['n']} runs) | {ref['p50']:.0f} | – | {ref['max']:.0f} | – | – |",
        "",
        f"Data generation: rows {took['rows']:.0f} s, rollup {took['rollup']:.0f} s, "
        f"VACUUM ANALYZE {took['analyze']:.0f} s. Load average (1 min) when the load "
        f"started / ended: {load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores — "
        "compare every row with the `/healthz` floor measured in the same minute.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("metrics_api", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
