"""The suite's promise under fire: writers commit intents and audit logs at a steady rate
while WS and SSE clients consume through two gateways; one at a time, the notifier, a
gateway, the ETL worker, Redis and PostgreSQL are killed with SIGKILL and started again.
At the end every committed row reached every client exactly once (after resume) and the
time-series table exactly once, and no service other than the crashed one was restarted.

The same invariant then holds on a 3-primary Redis Cluster with a primary crash, and with
a Redis that loses its data (no persistence: kill -9 and restart empty, then FLUSHALL) —
the PostgreSQL history fills what Redis forgot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest
import redis.asyncio
from bridge_common import migrate

from tests.support.cluster import LocalRedisCluster, redis_server
from tests.support.infra import unique_name
from tests.support.pg_server import PrivatePostgres, private_postgres
from tests.support.suite import Suite, make_token, suite_env
from tests.support.workload import (
    SdkConsumer,
    SseConsumer,
    Writer,
    WsConsumer,
    audit_ids_for,
    exactly_once,
)

# ~50-70 s each on an idle 2-core machine; the margin is for a machine shared with other runs
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

RATE = 40  # writer transactions a second (2 rows each)
STEADY = 3.0  # seconds of undisturbed load between faults
DRAIN = 40.0  # deadline for the last events to arrive after the writers stop

Fault = tuple[str, Callable[[], Awaitable[None]]]


async def migrate_db(dsn: str) -> None:
    await migrate.apply(dsn, "source")
    await migrate.apply(dsn, "target")


async def target_counts(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT source_id::text, count(*) FROM audit_logs_ts GROUP BY source_id"
        )
        return {k: int(n) for k, n in await cur.fetchall()}


async def run_under_faults(suite: Suite, dsn: str, faults: list[Fault]) -> None:
    """Load + clients + the fault schedule, then the exactly-once checks."""
    gateways = [suite.url("gateway-a"), suite.url("gateway-b")]
    token = make_token(["intents", "audit_logs"])
    consumers: list[WsConsumer | SseConsumer | SdkConsumer] = [
        WsConsumer(gateways, "intents", token, name="ws-intents"),
        WsConsumer(gateways[::-1], "audit_logs", token, name="ws-audit"),
        SseConsumer(gateways, "intents", token, name="sse-intents"),
        SseConsumer(gateways[::-1], "audit_logs", token, name="sse-audit"),
        # the SDK knows one gateway URL: it rides out that gateway's crash by reconnecting
        SdkConsumer(gateways[0], "intents", token, transport="websocket", name="sdk-ws"),
        SdkConsumer(gateways[1], "audit_logs", token, transport="sse", name="sdk-sse"),
    ]
    writer = Writer(dsn, RATE, name="e2e")
    stop_clients, stop_writer = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop_clients), name=c.name) for c in consumers]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.live.wait() for c in consumers)), 20)
        wtask = asyncio.create_task(writer.run(stop_writer))
        untouched = suite.pids()
        crashed: set[str] = set()
        for name, fault in faults:
            await asyncio.sleep(STEADY)
            await fault()
            crashed.add(name)
        await asyncio.sleep(STEADY)
        stop_writer.set()
        await wtask
        await writer.resolve_uncertain()
        # every service answers again, and none but the crashed ones has a new PID
        await suite.wait_all_ready()
        now = suite.pids()
        assert not suite.dead(), suite.logs()
        for name, pid in untouched.items():
            if name not in crashed:
                assert now[name] == pid, f"{name} was restarted"

        intents = writer.stats.committed_intents
        audit = await audit_ids_for(dsn, writer.stats.committed_markers)
        assert len(audit) == len(writer.stats.committed_markers)
        expected = {"intents": intents, "audit_logs": set(audit.values())}
        assert len(intents) > RATE * STEADY * len(faults) * 0.3  # load actually flowed

        deadline = time.monotonic() + DRAIN
        while time.monotonic() < deadline:
            done = all(not exactly_once(c.seen, "insert", expected[c.topic])[0] for c in consumers)
            loaded = await target_counts(dsn)
            if done and expected["audit_logs"] <= loaded.keys():
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # a late duplicate would show up now
    finally:
        stop_clients.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    report = []
    for c in consumers:
        missing, dups, unexpected = exactly_once(c.seen, "insert", expected[c.topic])
        report.append(
            f"{c.name}: got {len(c.seen.keys)} expected {len(expected[c.topic])} "
            f"missing {len(missing)} dup {len(dups)} unexpected {len(unexpected)} "
            f"reconnects {c.seen.reconnects} errors {c.seen.errors[:5]}"
        )
    summary = "\n".join(report)
    print(f"committed {len(intents)} transactions, {writer.stats.failures} failed\n{summary}")
    for c in consumers:
        missing, dups, unexpected = exactly_once(c.seen, "insert", expected[c.topic])
        assert not missing, summary + "\n" + suite.logs()
        assert not dups, summary
        assert not unexpected, summary
        assert not [e for e in c.seen.errors if not e.startswith("HTTP 5")], summary
        assert c.seen.ids == sorted(c.seen.ids, key=stream_order), f"{c.name} out of order"
    loaded = await target_counts(dsn)
    assert expected["audit_logs"] <= loaded.keys(), "ETL lost rows"
    assert all(loaded[k] == 1 for k in expected["audit_logs"]), "ETL duplicated rows"


def stream_order(event_id: str) -> tuple[int, ...]:
    """Event ids end in a Redis stream id `ms-seq`; compare numerically."""
    tail = event_id.rsplit(":", 1)[-1]
    ms, _, seq = tail.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() else (0, 0)


def start_suite(suite: Suite) -> None:
    suite.start("notifier", "notifier")
    suite.start("gateway-a", "gateway")
    suite.start("gateway-b", "gateway")
    suite.start("etl", "etl", ["--mode", "hybrid"])


async def test_nothing_lost_when_each_part_crashes(tmp_path: Path) -> None:
    """Standalone Redis (private, AOF fsync always) and a private PostgreSQL."""
    with private_postgres() as pg, redis_server(tmp_path, appendonly=True) as rds:
        dsn = pg.create_database("bridge")
        await migrate_db(dsn)
        suite = Suite(suite_env(dsn, unique_name("e2e"), redis_url=rds.url), tmp_path)
        try:
            await asyncio.to_thread(start_suite, suite)

            async def crash_redis() -> None:
                await asyncio.to_thread(rds.restart, hard=True, down_for=1.0)

            async def crash_postgres(pg: PrivatePostgres = pg) -> None:
                await asyncio.to_thread(pg.crash)
                await asyncio.sleep(1.0)
                await asyncio.to_thread(pg.start)

            faults: list[Fault] = [
                ("notifier", lambda: suite.crash_restart("notifier")),
                ("gateway-a", lambda: suite.crash_restart("gateway-a")),
                ("etl", lambda: suite.crash_restart("etl")),
                ("redis", crash_redis),
                ("postgres", crash_postgres),
            ]
            await run_under_faults(suite, dsn, faults)
        finally:
            suite.stop()


async def test_nothing_lost_when_redis_loses_its_data(tmp_path: Path) -> None:
    """Standalone Redis without persistence: a kill -9 brings it back empty, and a
    FLUSHALL empties it while everything stays connected."""
    with private_postgres() as pg, redis_server(tmp_path, appendonly=False) as rds:
        dsn = pg.create_database("bridge")
        await migrate_db(dsn)
        suite = Suite(suite_env(dsn, unique_name("e2e"), redis_url=rds.url), tmp_path)
        try:
            await asyncio.to_thread(start_suite, suite)

            async def restart_empty() -> None:
                await asyncio.to_thread(rds.restart, hard=True, down_for=1.0)

            async def flushall() -> None:
                client = redis.asyncio.Redis.from_url(rds.url)
                try:
                    await client.flushall()
                finally:
                    await client.aclose()

            faults: list[Fault] = [
                ("redis-restart-empty", restart_empty),
                ("redis-flushall", flushall),
            ]
            await run_under_faults(suite, dsn, faults)
        finally:
            suite.stop()


async def test_nothing_lost_on_redis_cluster_primary_crash(
    tmp_path: Path, local_cluster: LocalRedisCluster, migrated_dsn: str
) -> None:
    """The 3-primary cluster: the primary(s) holding `{intents}` and `{audit_logs}` crash.

    While a restarted primary rejoins, the cluster answers `CLUSTERDOWN` for a moment;
    redis-py raises that as `ClusterDownError`, a `ResponseError` (not a
    `ConnectionError`), and every service must treat it as the transient outage it is."""
    ns = unique_name("e2ec")
    suite = Suite(suite_env(migrated_dsn, ns, cluster_nodes=local_cluster.nodes_env), tmp_path)
    try:
        await asyncio.to_thread(start_suite, suite)
        from bridge_common.channels import Channels

        ch = Channels(ns)
        owners = sorted(
            {local_cluster.node_for_key(ch.stream(t)) for t in ("intents", "audit_logs")}
        )

        def primary(i: int) -> Fault:
            async def crash() -> None:
                await asyncio.to_thread(local_cluster.restart_primary, i, down_for=1.0)

            return (f"redis-{i}", crash)

        faults: list[Fault] = [
            *(primary(i) for i in owners),
            ("notifier", lambda: suite.crash_restart("notifier")),
            ("gateway-b", lambda: suite.crash_restart("gateway-b")),
        ]
        await run_under_faults(suite, migrated_dsn, faults)
    finally:
        suite.stop()
