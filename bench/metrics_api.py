"""Metrics API latency over millions of audit rows, caches off, beside GROUP BY over the
raw rows: overview, timelines from one hour by minute to 90 days by day, with and without
filters, and corrections.

`just bench metrics_api` (default 2 000 000 rows over 90 days; `--rows=20000000` is what
this shared 2-core machine finishes in minutes, `--rows=100000000` the issue's full size).
Rows are generated with `generate_series` straight into `audit_logs_ts` (the rollups'
source), one INSERT per day, then counted into the per-minute rollup with one
`INSERT … SELECT … GROUP BY` — the statement shape of the ETL's upsert, so the triggers of
migration 0004 fill the per-hour, per-day and all-actions rollups exactly as they do behind
the ETL. 100 000 intents go into the source table. The real `bridge-metrics-api` process
then answers closed-loop load from a few concurrent HTTP clients, one question at a time,
with its caches off (and, for comparison, the dashboard's two questions with the caches
on). In the same run: `/healthz` (the HTTP floor), every question as a `GROUP BY` over the
raw rows, and the rollups' storage per day of data.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from urllib.parse import urlencode

import httpx
import psycopg
from bridge_etl.target import ROLLUP_RELATIONS
from bridge_metrics_api import planner

from bench.report import write_section
from tests.support import infra
from tests.support.ops import ops_headers
from tests.support.suite import JWT_SECRET

ROLLUPS = ROLLUP_RELATIONS
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
        # evenly spread over the span, one statement per day (a bounded transaction each);
        # 20 % debug, 70 % info, then warning, error, critical
        per_day = rows / days
        day_start = 0
        for day in range(days):
            day_end = rows if day == days - 1 else round(per_day * (day + 1))
            conn.execute(
                """
                INSERT INTO audit_logs_ts (source_id, created_at, intent_id, actor, action,
                                           severity, details, ingested_at)
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
                FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
                """,
                {
                    "start": start,
                    "end": end - timedelta(seconds=1),
                    "rows": rows,
                    "actions": ACTIONS,
                    "lo": day_start + 1,
                    "hi": day_end,
                },
            )
            day_start = day_end
            if days >= 10 and day % 10 == 9:
                log(f"  {day + 1}/{days} days, {time.perf_counter() - t:.0f} s")
        took["rows"] = time.perf_counter() - t
        t = time.perf_counter()
        # the ETL's upsert shape; the triggers of migration 0004 fill hours, days, totals
        conn.execute(
            """
            INSERT INTO audit_logs_1m (bucket, action, severity, events)
            SELECT date_bin('1 minute', created_at, timestamptz '2000-01-01Z'), action,
                   severity, count(*)
            FROM audit_logs_ts GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            ON CONFLICT (bucket, action, severity)
            DO UPDATE SET events = audit_logs_1m.events + EXCLUDED.events
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
        for table in ("audit_logs_ts", *ROLLUPS, "intents"):
            conn.execute(f"VACUUM ANALYZE {table}")
        took["analyze"] = time.perf_counter() - t
    return took


async def load(url: Callable[[], str], seconds: float, concurrency: int) -> dict[str, float]:
    """Closed loop: `concurrency` clients each send the next request when one returns."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    # one ops token for the run: the server verifies it on every request, as in production
    headers = ops_headers()
    async with httpx.AsyncClient(limits=limits, timeout=30, headers=headers) as client:
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


@dataclass(frozen=True)
class Question:
    """One request shape of the API, and the same question as SQL over the raw rows."""

    label: str
    path: str
    span: timedelta
    query: dict[str, str] = field(default_factory=dict)
    width: timedelta | None = None  # the answer's bucket (None: overview)

    def window(self) -> tuple[datetime, datetime]:
        """The span ending now: each request asks for a slightly later range."""
        until = datetime.now(UTC)
        return until - self.span, until

    def url(self, base: str) -> str:
        since, until = self.window()
        q = {**self.query, "since": since.isoformat(), "until": until.isoformat()}
        if self.path.endswith("overview"):
            q = {}
        return f"{base}{self.path}?{urlencode(q)}" if q else base + self.path

    def buckets(self) -> int:
        """Rollup buckets the planner reads for this question (rows in the totals, at
        most five per bucket with an action filter)."""
        since, until = self.window()
        if self.width is None:  # overview: the last hour of minutes + the 24 h plan
            return 60 + planner.plan(since, until, None).buckets
        return planner.plan(since, until, self.width).buckets

    def raw_sql(self) -> str:
        where = "created_at >= %(since)s AND created_at < %(until)s"
        if "action" in self.query:
            where += " AND action = %(action)s"
        if "severity" in self.query:
            where += " AND severity = ANY(%(severities)s)"
        if self.width is None:
            return (
                "SELECT severity, count(*) FILTER (WHERE created_at > %(until)s - interval"
                " '5 minutes'), count(*) FILTER (WHERE created_at > %(until)s - interval"
                " '1 hour'), count(*) FROM audit_logs_ts"
                " WHERE created_at > %(since)s AND created_at <= %(until)s GROUP BY 1"
            )
        if self.path.endswith("corrections"):
            return (
                "SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01Z'), count(*)"
                f" FROM audit_logs_ts WHERE action = 'intent.corrected' AND {where} GROUP BY 1"
            )
        return (
            "SELECT date_bin(%(width)s, created_at, timestamptz '2000-01-01Z'), severity,"
            f" count(*) FROM audit_logs_ts WHERE {where} GROUP BY 1, 2"
        )


H, D = timedelta(hours=1), timedelta(days=1)
TL, CO, OV = (
    "/api/v1/dashboard/timeline",
    "/api/v1/dashboard/corrections",
    "/api/v1/dashboard/overview",
)
ERRORS = {"severity": "error,critical"}
QUESTIONS = [
    Question("overview", OV, 24 * H),
    Question("timeline 1m / 1 h", TL, H, {"bucket": "1m"}, timedelta(minutes=1)),
    Question("timeline 1m / 24 h (dashboard)", TL, 24 * H, {"bucket": "1m"}, timedelta(minutes=1)),
    Question("timeline 1h / 7 d", TL, 7 * D, {"bucket": "1h"}, H),
    Question(
        "timeline 1h / 7 d, action", TL, 7 * D, {"bucket": "1h", "action": "intent.failed"}, H
    ),
    Question("timeline 1h / 7 d, severity", TL, 7 * D, {"bucket": "1h", **ERRORS}, H),
    Question("timeline 1d / 90 d", TL, 90 * D, {"bucket": "1d"}, D),
    Question(
        "timeline 1d / 90 d, action + severity",
        TL,
        90 * D,
        {"bucket": "1d", "action": "intent.corrected", **ERRORS},
        D,
    ),
    Question("corrections 24 h", CO, 24 * H, {"limit": "20"}, H),
    Question("corrections 7 d", CO, 7 * D, {"limit": "20"}, H),
]
CACHED = [QUESTIONS[0], QUESTIONS[2]]


def serve_and_load(
    args: argparse.Namespace,
    dsn: str,
    redis_url: str,
    extra: dict[str, str],
    questions: list[Question],
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
        "BRIDGE_JWT_SECRET": JWT_SECRET,
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
            check = httpx.get(questions[-1].url(base), timeout=30, headers=ops_headers())
            if check.status_code != 200:
                log(f"{questions[-1].label}: HTTP {check.status_code} {check.text[:300]}")
                return None
            targets = [(q.label, partial(q.url, base)) for q in questions]
            targets.append(("reference: /healthz (HTTP floor)", lambda: base + "/healthz"))
            for label, url in targets:
                # one client first: the cost of a request without queueing behind others
                one = asyncio.run(load(url, args.seconds / 2, 1))
                r = asyncio.run(load(url, args.seconds, args.concurrency))
                r["alone_p50"], r["alone_p99"] = one["p50"], one["p99"]
                log(
                    f"{label}: alone p50 {one['p50']:.1f} / p99 {one['p99']:.1f} ms; "
                    f"×{args.concurrency}: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
                    f"{r['rps']:.0f} req/s, {r['errors']} errors"
                )
                results.append((label, r))
        finally:
            proc.terminate()
            proc.wait(15)
    return results


def raw_reference(dsn: str, q: Question, repeat: int) -> dict[str, float]:
    """The same question as a GROUP BY over the raw rows (one connection, `repeat` runs)."""
    times = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(repeat):
            since, until = q.window()
            params = {
                "since": since,
                "until": until,
                "width": q.width,
                "action": q.query.get("action"),
                "severities": q.query.get("severity", "").split(","),
            }
            t = time.perf_counter()
            conn.execute(q.raw_sql(), params).fetchall()
            times.append(time.perf_counter() - t)
    times.sort()
    return {"p50": 1000 * statistics.median(times), "max": 1000 * times[-1], "n": repeat}


def storage(dsn: str, days: float) -> list[tuple[str, int, float, float]]:
    """(relation, rows, rows per day, bytes per day incl. indexes) of the raw table and
    each rollup."""
    out = []
    with psycopg.connect(dsn) as conn:
        for rel in ("audit_logs_ts", *ROLLUPS):
            if rel == "audit_logs_ts":
                row = conn.execute(
                    "SELECT count(*), (SELECT sum(pg_total_relation_size(inhrelid))"
                    " FROM pg_inherits WHERE inhparent = 'audit_logs_ts'::regclass)"
                    " FROM audit_logs_ts"
                ).fetchone()
            else:
                row = conn.execute(
                    f"SELECT count(*), pg_total_relation_size('{rel}') FROM {rel}"  # noqa: S608
                ).fetchone()
            assert row is not None
            out.append((rel, int(row[0]), row[0] / days, float(row[1] or 0) / days))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="just bench metrics_api")
    parser.add_argument(
        "--rows", type=int, default=2_000_000, help="audit rows (100000000: the issue's size)"
    )
    parser.add_argument("--days", type=int, default=90, help="span the rows cover")
    parser.add_argument("--raw-runs", type=int, default=3, help="runs of each raw GROUP BY")
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
                "SELECT count(*), extract(epoch FROM max(created_at) - min(created_at)) / 86400"
                " FROM audit_logs_ts"
            ).fetchone()
        assert row is not None
        args.rows, args.days = int(row[0]), max(1, round(float(row[1] or 1)))
        took = {"rows": 0.0, "rollup": 0.0, "intents": 0.0, "analyze": 0.0}
        log(f"reusing {args.db}: {args.rows:,} rows (its data ends when it was generated)")
    else:
        asyncio.run(schema())
        log(f"generating {args.rows:,} audit rows over {args.days} days …")
        took = generate(dsn, args.rows, args.days, args.intents)
    log(f"rows {took['rows']:.1f}s, rollups {took['rollup']:.1f}s, analyze {took['analyze']:.1f}s")
    load_before = os.getloadavg()[0]
    off = {"BRIDGE_METRICS_CACHE_TTL": "0", "BRIDGE_METRICS_BUCKET_CACHE_TTL": "0"}
    log("server with caches off")
    uncached = serve_and_load(args, dsn, redis_url, off, QUESTIONS)
    if uncached is None:
        return 1
    log("server with caches on (the dashboard's two questions)")
    cached = serve_and_load(args, dsn, redis_url, {}, CACHED)
    if cached is None:
        return 1
    load_after = os.getloadavg()[0]
    raw = {}
    for q in QUESTIONS:
        raw[q.label] = raw_reference(dsn, q, args.raw_runs)
        log(f"raw GROUP BY, {q.label}: p50 {raw[q.label]['p50']:.0f} ms")
    sizes = storage(dsn, args.days)
    reads = {q.label: q.buckets() for q in QUESTIONS}

    rows_txt = f"{args.rows:,}".replace(",", " ")
    flag = f" --rows={args.rows}" if args.rows != 2_000_000 else ""
    flag += f" --days={args.days}" if args.days != 90 else ""
    lines = [
        "## Metrics API",
        "",
        f"`just bench metrics_api{flag}` — **{rows_txt} audit rows** over {args.days} days, "
        f"{args.intents:,} intents; the real `bridge-metrics-api` process (one uvicorn "
        f"worker), closed-loop load from {args.concurrency} concurrent HTTP clients for "
        f"{args.seconds:g} s per question, load generator on the same 2 cores (shared with "
        "the other engineers' test runs). Target: p99 ≤ 50 ms **with the caches off** for "
        "every question. Each request asks for the span ending *now*, so its edges are "
        "never aligned. Rows were generated straight into `audit_logs_ts` (one INSERT … "
        "generate_series per day) and counted into `audit_logs_1m` with one INSERT … "
        "GROUP BY … ON CONFLICT, whose triggers (migration 0004) filled the hour, day and "
        "all-actions rollups as they do behind the ETL.",
        "",
        f"| question (caches off) | rollup buckets read | 1 client p50 ms | 1 client p99 ms "
        f"| {args.concurrency} clients p50 ms | {args.concurrency} clients p99 ms | max ms "
        "| req/s | errors | raw `GROUP BY` p50 ms | raw max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in uncached:
        ref = raw.get(label)
        ref_p50, ref_max = (f"{ref['p50']:.0f}", f"{ref['max']:.0f}") if ref else ("–", "–")
        lines.append(
            f"| {label} | {reads.get(label, '–')} | {r['alone_p50']:.1f} | {r['alone_p99']:.1f} "
            f"| {r['p50']:.1f} | {r['p99']:.1f} "
            f"| {r['max']:.1f} | {r['rps']:.0f} | {r['errors']} | {ref_p50} | {ref_max} |"
        )
    lines += [
        "",
        "With the caches on (defaults), for comparison:",
        "",
        f"| question (caches on) | 1 client p50 ms | 1 client p99 ms | {args.concurrency} "
        f"clients p50 ms | {args.concurrency} clients p99 ms | max ms | req/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in cached:
        lines.append(
            f"| {label} | {r['alone_p50']:.1f} | {r['alone_p99']:.1f} | {r['p50']:.1f} "
            f"| {r['p99']:.1f} | {r['max']:.1f} | {r['rps']:.0f} | {r['errors']} |"
        )
    lines += [
        "",
        "Storage per day of data (table + indexes):",
        "",
        "| relation | rows | rows per day | KiB per day |",
        "|---|---:|---:|---:|",
    ]
    for rel, n, per_day, bytes_per_day in sizes:
        lines.append(f"| `{rel}` | {n:,} | {per_day:,.0f} | {bytes_per_day / 1024:,.0f} |")
    lines += [
        "",
        f"Raw `GROUP BY`: {args.raw_runs} run(s) each on one connection, same data, same "
        "minute. "
        + (
            f"Data reused from an earlier run (`--db {args.db}`); it ends when it was "
            "generated, so the spans ending now hold a little less data. "
            if args.db
            else f"Data generation: rows {took['rows']:.0f} s, rollups (minutes + triggers) "
            f"{took['rollup']:.0f} s, VACUUM ANALYZE {took['analyze']:.0f} s. "
        )
        + "Load average "
        f"(1 min) when the load started / ended: {load_before:.1f} / {load_after:.1f} on "
        f"{os.cpu_count()} cores — compare every row with the `/healthz` floor measured in "
        "the same minute.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("metrics_api", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
