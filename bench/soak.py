"""Soak: the whole suite as real processes under steady load for a given time (`just soak
10m`; `--duration=12h` for the long run). Every `--interval` seconds it samples the RSS of
every service process, the p99 commit→client latency, the age of the oldest committed but
undelivered row, the ETL backlog, client reconnects and error counts, into
`bench/results/soak-<stamp>.csv` and a PNG chart; at the end it checks loss and
duplicates per client and in the time-series table and writes the soak section of
docs/benchmarks.md.

It uses the machine's PostgreSQL and Redis (`BRIDGE_TEST_DSN` / `BRIDGE_TEST_REDIS_URL`
or the local defaults) with a database and a namespace of its own, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
from bridge_common import migrate

from bench.report import write_section
from bench.soak_sampler import Sample, Series, chart, p99, rss_mb, rss_trend
from tests.support import infra
from tests.support.cluster import LocalRedisCluster
from tests.support.ops import OPS
from tests.support.suite import Suite, make_token, suite_env
from tests.support.workload import SseConsumer, Writer, WsConsumer, audit_ids_for

RESULTS = Path(__file__).resolve().parent / "results"
SERVICES = ["notifier", "gateway-a", "gateway-b", "etl", "metrics-api", "alerter"]

RULES = """\
channels:
  sink: {{type: webhook, url: "http://127.0.0.1:{port}/hook", secret: "soak"}}
rules:
  - name: soak_error_rate
    metric: audit.error_rate_5m
    op: ">"
    threshold: 0.1
    for: 10s
    severity: warning
    summary: "error rate {{{{ value }}}}"
    notify: [sink]
"""


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m, 12h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


async def webhook_sink() -> tuple[asyncio.Server, list[int]]:
    """A local receiver for the alerter's webhooks: answers 200, counts requests."""
    hits: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            hits.append(1)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, hits


async def run(args: argparse.Namespace) -> int:
    duration = args.duration
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    workdir = Path(tempfile.mkdtemp(prefix="bridge-soak-"))
    with infra.postgres_admin_dsn() as (admin, why), infra.redis_url() as (redis_url, why2):
        if admin is None or redis_url is None:
            print(f"soak needs PostgreSQL and Redis: {why or why2}")
            return 2
        dbname = infra.unique_name("soak")
        dsn = infra.create_database(admin, dbname)
        namespace = infra.unique_name("soak")
        sink, hooks = await webhook_sink()
        cluster = None
        if args.cluster:
            # a private 3-primary Redis Cluster instead of the machine's Redis
            cluster = LocalRedisCluster(workdir, 3, appendonly=True).start()
            env = suite_env(dsn, namespace, cluster_nodes=cluster.nodes_env)
        else:
            env = suite_env(dsn, namespace, redis_url=redis_url)
        suite = Suite(env, workdir)
        try:
            await migrate.apply(dsn, "source")
            await migrate.apply(dsn, "target")
            rules = workdir / "alerts.yaml"
            rules.write_text(RULES.format(port=sink.sockets[0].getsockname()[1]))
            started = await asyncio.to_thread(start_services, suite, rules)
            return await soak(args, suite, started, dsn, duration, stamp, hooks)
        finally:
            suite.stop()
            if cluster is not None:
                cluster.stop()
            sink.close()
            infra.drop_database(admin, dbname)
            infra.delete_namespace(redis_url, namespace)
            shutil.rmtree(workdir, ignore_errors=True)


def start_services(suite: Suite, rules: Path) -> list[str]:
    """Start what exists; a service that cannot start is reported, not hidden."""
    plan = [
        ("notifier", "notifier", []),
        ("gateway-a", "gateway", []),
        ("gateway-b", "gateway", []),
        ("etl", "etl", ["--mode", "hybrid"]),
        ("metrics-api", "metrics_api", []),
        ("alerter", "alerter", ["--rules", str(rules)]),
    ]
    started = []
    for name, service, extra in plan:
        try:
            suite.start(name, service, extra)
            started.append(name)
        except (RuntimeError, TimeoutError) as exc:
            print(f"soak: {name} did not start: {str(exc).splitlines()[0]}")
    return started


async def soak(
    args: argparse.Namespace,
    suite: Suite,
    started: list[str],
    dsn: str,
    duration: float,
    stamp: str,
    hooks: list[int],
) -> int:
    if not {"notifier", "gateway-a"} <= set(started):
        print("soak: the notifier and a gateway are required")
        return 1
    gateways = [suite.url(n) for n in ("gateway-a", "gateway-b") if n in started]
    token = make_token(["intents", "audit_logs"])
    consumers: list[WsConsumer | SseConsumer] = [
        WsConsumer(gateways[i % 2 :] + gateways[: i % 2], "intents", token, name=f"ws-{i}")
        for i in range(args.ws_clients)
    ]
    consumers.append(SseConsumer(gateways, "intents", token, name="sse"))
    consumers.append(WsConsumer(gateways, "audit_logs", token, name="ws-audit"))
    stop_clients, stop_writer = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop_clients)) for c in consumers]
    await asyncio.wait_for(asyncio.gather(*(c.live.wait() for c in consumers)), 30)
    writer = Writer(dsn, args.rate, payload_bytes=args.payload, name="soak")
    wtask = asyncio.create_task(writer.run(stop_writer))
    series = Series()
    t0 = time.time()
    seen_count = {id(c): 0 for c in consumers}
    cursors: dict[int, int] = {}
    api = suite.url("metrics-api") if "metrics-api" in started else None
    async with (
        httpx.AsyncClient(timeout=5, auth=OPS) as http,  # the metrics API wants an ops token
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db,
    ):
        while time.time() - t0 < duration:
            await asyncio.sleep(min(args.interval, max(0.0, duration - (time.time() - t0))))
            series.samples.append(
                await sample(
                    suite, started, consumers, writer, seen_count, cursors, t0, db, http, api
                )
            )
            s = series.samples[-1]
            print(
                f"t={s.t:6.0f}s committed={s.committed} p99={s.p99_ms}ms lag={s.lag_s:.2f}s "
                f"etl_backlog={s.etl_backlog} errors={s.errors} "
                + " ".join(f"{k}={v:.0f}MB" for k, v in s.rss_mb.items()),
                flush=True,
            )
        stop_writer.set()
        await wtask
        await writer.resolve_uncertain()
        committed = writer.stats.committed_intents
        audit = await audit_ids_for(dsn, writer.stats.committed_markers)
        deadline = time.time() + 60
        while time.time() < deadline:
            backlog = await etl_backlog(db, set(audit.values()))
            behind = [c for c in consumers if missing_of(c, committed, audit)]
            if not behind and backlog == 0:
                break
            await asyncio.sleep(1)
        final_backlog = await etl_backlog(db, set(audit.values()))
        target_dups = await target_duplicates(db)
    stop_clients.set()
    await asyncio.gather(*tasks, return_exceptions=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS / f"soak-{stamp}.csv"
    png_path = RESULTS / f"soak-{stamp}.png"
    series.write_csv(csv_path, started)
    kind = "Redis Cluster" if args.cluster else "standalone Redis"
    chart(series, started, png_path, f"soak {args.duration_text}, {args.rate:g} tx/s, {kind}")
    if not args.no_doc:
        shutil.copy(png_path, RESULTS / "soak.png")  # the chart docs/benchmarks.md shows

    lost = {c.name: len(missing_of(c, committed, audit)) for c in consumers}
    dups = {c.name: sum(n - 1 for n in c.seen.count_of("insert").values() if n > 1)
            for c in consumers}  # fmt: skip
    all_lat = [
        (c.seen.received_at[k] - writer.stats.commit_times[k]) * 1000
        for c in consumers
        if c.topic == "intents"
        for k in committed
        if k in c.seen.received_at and k in writer.stats.commit_times
    ]
    body = report(
        args, series, started, csv_path, len(committed), lost, dups, final_backlog,
        target_dups, all_lat, writer.stats.failures, len(hooks), consumers,
    )  # fmt: skip
    print(body)
    if not args.no_doc:
        write_section("soak", body)
    return 0 if not any(lost.values()) and not any(dups.values()) and not final_backlog else 1


def missing_of(c: WsConsumer | SseConsumer, intents: set[str], audit: dict[str, str]) -> set[str]:
    expected = intents if c.topic == "intents" else set(audit.values())
    return expected - c.seen.count_of("insert").keys()


async def etl_backlog(db: psycopg.AsyncConnection, ids: set[str]) -> int:  # type: ignore[type-arg]
    if not ids:
        return 0
    cur = await db.execute(
        "SELECT count(*) FROM unnest(%s::bigint[]) AS s(id)"
        " WHERE NOT EXISTS (SELECT 1 FROM audit_logs_ts t WHERE t.source_id = s.id)",
        (sorted(int(i) for i in ids),),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def target_duplicates(db: psycopg.AsyncConnection) -> int:  # type: ignore[type-arg]
    cur = await db.execute(
        "SELECT count(*) FROM (SELECT source_id FROM audit_logs_ts GROUP BY source_id"
        " HAVING count(*) > 1) d"
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def sample(
    suite: Suite,
    started: list[str],
    consumers: list[WsConsumer | SseConsumer],
    writer: Writer,
    seen_count: dict[int, int],
    delivered_through: dict[int, int],
    t0: float,
    db: psycopg.AsyncConnection,  # type: ignore[type-arg]
    http: httpx.AsyncClient,
    api: str | None,
) -> Sample:
    now = time.time()
    commit_times = writer.stats.commit_times
    lat: list[float] = []
    oldest = 0.0
    order = writer.stats.order
    for c in consumers:
        if c.topic != "intents":
            continue
        keys = c.seen.keys
        for _op, key in keys[seen_count[id(c)] :]:
            if key in commit_times and key in c.seen.received_at:
                lat.append((c.seen.received_at[key] - commit_times[key]) * 1000)
        seen_count[id(c)] = len(keys)
        # the oldest committed row this client has not received yet: delivery follows
        # commit order closely, so a cursor over the commit order finds it cheaply
        cursor = delivered_through.get(id(c), 0)
        while cursor < len(order) and order[cursor] in c.seen.received_at:
            cursor += 1
        delivered_through[id(c)] = cursor
        if cursor < len(order):
            oldest = max(oldest, now - commit_times[order[cursor]])
    cur = await db.execute(
        "SELECT (SELECT count(*) FROM audit_logs) - (SELECT count(*) FROM audit_logs_ts)"
    )
    row = await cur.fetchone()
    api_ms: float | None = None
    errors = writer.stats.failures + sum(len(c.seen.errors) for c in consumers)
    if api is not None:
        t = time.perf_counter()
        try:
            r = await http.get(api + "/api/v1/dashboard/overview")
            api_ms = (time.perf_counter() - t) * 1000
            errors += r.status_code >= 500
        except httpx.HTTPError:
            errors += 1
    errors += len(suite.dead())
    return Sample(
        t=now - t0,
        rss_mb={n: rss_mb(suite.procs[n].pid) for n in started if suite.procs[n].alive()},
        p99_ms=p99(lat),
        lag_s=oldest,
        etl_backlog=int(row[0]) if row else 0,
        committed=len(writer.stats.committed_intents),
        delivered_min=min(len(c.seen.received_at) for c in consumers if c.topic == "intents"),
        errors=errors,
        reconnects=sum(c.seen.reconnects for c in consumers),
        api_ms=api_ms,
    )


def report(
    args: argparse.Namespace,
    series: Series,
    started: list[str],
    csv_path: Path,
    committed: int,
    lost: dict[str, int],
    dups: dict[str, int],
    backlog: int,
    target_dups: int,
    latencies: list[float],
    writer_failures: int,
    hooks: int,
    consumers: list[WsConsumer | SseConsumer],
) -> str:
    missing = sorted(set(SERVICES) - set(started))
    rows = []
    for name in started:
        first, last, slope = rss_trend(series, name)
        rows.append(f"| {name} | {first:.1f} | {last:.1f} | {slope:+.1f} |")
    lat_sorted = sorted(latencies)
    p50 = lat_sorted[len(lat_sorted) // 2] if lat_sorted else math.nan
    overall_p99 = p99(lat_sorted) or math.nan
    rel = csv_path.relative_to(Path(__file__).resolve().parent.parent)
    lines = [
        f"## Soak (`just soak {args.duration_text}`)",
        "",
        f"Measured run: {args.duration_text} at {args.rate:g} writer transactions/s (one intent",
        f"+ one audit log each), {len(consumers)} clients ({args.ws_clients} WS on `intents`,",
        "1 SSE on `intents`, 1 WS on `audit_logs`) over two gateways; samples every",
        f"{args.interval:g} s in `{rel}` (chart below). All services on one shared",
        "2-core machine with the PostgreSQL and Redis they use and the load generator.",
        "Redis: " + ("a local 3-primary Redis Cluster." if args.cluster else "standalone."),
        "",
        f"- committed transactions: {committed:,} ({committed / args.duration:.1f}/s achieved;"
        " one writer connection, so a busy machine lowers the rate, never bursts it);"
        f" writer errors: {writer_failures}",
        f"- lost per client: {lost}; duplicated per client: {dups}",
        f"- time-series table: {backlog} committed audit rows missing, {target_dups} duplicated",
        f"- commit→client latency over the whole run: p50 {p50:.0f} ms, p99 {overall_p99:.0f} ms",
        f"- alert webhooks received by the local sink: {hooks}",
    ]
    if missing:
        lines.append(f"- services not running in this soak (did not start): {', '.join(missing)}")
    lines += [
        "",
        "RSS per service (MB): first sample, last sample, and the least-squares slope over",
        "the second half of the run (after warm-up), in MB per hour:",
        "",
        "| service | first | last | slope (MB/h) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        "A run this short shows warm-up and steady state, not a slow leak: only the 12-hour",
        "procedure below can show a trend of a few MB per hour. The machine was shared with",
        "other test runs while this was measured, which is what the p99 spikes reflect.",
        "",
        "![soak chart](../bench/results/soak.png)",
        "",
        "### The 12-hour procedure",
        "",
        "1. Quiet machine (nothing else running), PostgreSQL and Redis up; `just setup`.",
        "2. `just soak 12h` (or `uv run python -m bench soak --duration=12h --interval=60`);",
        "   run it under `nohup … > soak.log 2>&1 &` or in tmux so a closed terminal does",
        "   not end it. Rates: `--rate=100 --ws-clients=20` is a realistic steady load;",
        "   add `--cluster` to run on a private local 3-primary Redis Cluster.",
        "3. It prints one line per sample and writes `bench/results/soak-<stamp>.csv` as it",
        "   ends, the chart, and this section. Exit status 0 means nothing lost or doubled.",
        "4. Judge: the RSS slope of every service over the second half should be within",
        "   noise (a few MB/h), p99 flat, the ETL backlog and undelivered age bounded, no",
        "   errors except around deliberate faults. Attach the CSV to the release notes.",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench soak")
    parser.add_argument("--duration", default="10m", help="e.g. 90s, 10m, 12h (default 10m)")
    parser.add_argument("--rate", type=float, default=50.0, help="writer transactions/s")
    parser.add_argument("--ws-clients", type=int, default=4)
    parser.add_argument("--payload", type=int, default=200, help="bytes of padding per intent")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between samples")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument(
        "--cluster", action="store_true", help="run on a private local 3-primary Redis Cluster"
    )
    args = parser.parse_args(argv)
    args.duration_text = args.duration
    args.duration = parse_duration(args.duration)
    if args.interval <= 0:
        args.interval = max(2.0, min(60.0, args.duration / 120))
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
