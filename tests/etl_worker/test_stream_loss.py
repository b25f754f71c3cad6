"""Event mode survives what Redis forgets: a trim past the consumer group, a Redis killed
and restarted empty mid-stream, FLUSHALL — each time the worker notices, repairs from the
source table, and the target ends complete and duplicate-free.

Uses a PRIVATE non-persistent redis-server (tests.support.cluster.redis_server), killed
and flushed here; the shared Redis is never touched.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from bridge_common.channels import Channels
from bridge_common.events import event_fragment_raw
from bridge_common.redis import EventPublisher, create_redis
from bridge_common.settings import BridgeSettings

from tests.etl_worker.audit import (
    insert_rows,
    rollup_mismatches,
    source_sum,
    target_sum,
    wait_converged,
    wait_for,
)
from tests.support.cluster import RedisNode, redis_cluster, redis_server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisNode]:
    with redis_server(tmp_path / "redis", appendonly=False) as node:
        yield node


@pytest.fixture
def event_env(etl_env: dict[str, str], private_redis: RedisNode) -> dict[str, str]:
    return {
        **etl_env,
        "BRIDGE_REDIS_URL": private_redis.url,
        "BRIDGE_ETL_MODE": "event",
        "BRIDGE_ETL_BATCH_SIZE": "200",
        # only detected losses repair here (the timer has its own test)
        "BRIDGE_ETL_REPAIR_INTERVAL": "0",
    }


def publish(
    url: str, namespace: str, dsn: str, where: str = "", *, maxlen: int = 100_000, nodes: str = ""
) -> int:
    """Publish source rows as insert events the way the notifier does, bounded by `maxlen`."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT id, to_jsonb(a)::text FROM audit_logs a {where} ORDER BY id"  # noqa: S608
        ).fetchall()
    frags = [
        (None, event_fragment_raw("insert", str(i), j, "2026-01-01T00:00:00Z")) for i, j in rows
    ]

    async def go() -> None:
        where_to = {"BRIDGE_REDIS_CLUSTER_NODES": nodes} if nodes else {"BRIDGE_REDIS_URL": url}
        client = create_redis(BridgeSettings(**where_to))
        try:
            pub = EventPublisher(client, Channels(namespace), maxlen=maxlen)
            for k in range(0, len(frags), 100):
                await pub.publish("audit_logs", frags[k : k + 100])
        finally:
            await client.aclose()

    asyncio.run(go())
    return len(rows)


def metric(url: str, name: str, **labels: str) -> float:
    """A counter summed over the samples matching `labels` (0 when absent)."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def duplicates(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) - count(DISTINCT source_id) FROM audit_logs_ts"
        ).fetchone()
    assert row is not None
    return int(row[0])


def assert_complete(dsn: str) -> None:
    wait_converged(dsn, 60)
    assert target_sum(dsn) == source_sum(dsn)
    assert duplicates(dsn) == 0
    assert rollup_mismatches(dsn) == []


def test_trim_past_the_group_is_repaired_from_the_source(
    spawn, event_env, clean, private_redis, namespace
) -> None:
    insert_rows(clean, 500)
    publish(private_redis.url, namespace, clean, "WHERE id <= 500")
    proc = spawn("etl", event_env)
    wait_for(lambda: target_sum(clean)[0] == 500, 30, "first 500 rows")
    assert proc.stop() == 0
    # while the worker is away the stream is trimmed far past its group's position
    insert_rows(clean, 3000, start=500)
    publish(private_redis.url, namespace, clean, "WHERE id > 500", maxlen=50)
    with redis.Redis.from_url(private_redis.url) as r:
        assert r.xlen(Channels(namespace).stream("audit_logs")) < 3000
    proc = spawn("etl", event_env)
    assert_complete(clean)
    wait_for(lambda: metric(proc.url, "bridge_etl_repairs_total") >= 1, 20, "a repair")
    assert metric(proc.url, "bridge_etl_stream_losses_total", reason="trimmed") >= 1
    assert metric(proc.url, "bridge_etl_rows_total", origin="repair") > 0
    # what arrives after the repair flows through the stream again
    insert_rows(clean, 100, start=3500)
    publish(private_redis.url, namespace, clean, "WHERE id > 3500")
    assert_complete(clean)
    assert proc.stop() == 0


def test_trim_while_the_worker_reads(spawn, event_env, clean, private_redis, namespace) -> None:
    """A bounded stream that a fast writer trims under a live worker: nothing is missing."""
    proc = spawn("etl", {**event_env, "BRIDGE_ETL_BATCH_SIZE": "20"})
    insert_rows(clean, 6000)
    publish(private_redis.url, namespace, clean, "", maxlen=20)
    assert_complete(clean)
    assert metric(proc.url, "bridge_etl_stream_losses_total") >= 1
    assert proc.stop() == 0


@pytest.mark.parametrize(
    ("mode", "how"), [("event", "kill-9"), ("event", "flushall"), ("hybrid", "kill-9")]
)
def test_redis_data_loss_mid_stream(
    spawn, event_env, clean, private_redis, namespace, mode, how
) -> None:
    proc = spawn("etl", {**event_env, "BRIDGE_ETL_MODE": mode})
    insert_rows(clean, 20_000)
    publish(private_redis.url, namespace, clean, "WHERE id <= 20000")
    wait_for(lambda: target_sum(clean)[0] >= 600, 30, "first batches")
    if how == "kill-9":
        private_redis.restart(hard=True)  # no persistence: it comes back empty
    else:
        with redis.Redis.from_url(private_redis.url) as r:
            r.flushall()
    assert target_sum(clean)[0] < 20_000, "the loss must land mid-stream"
    # the notifier goes on publishing into the new, empty Redis
    insert_rows(clean, 500, start=20_000)
    publish(private_redis.url, namespace, clean, "WHERE id > 20000")
    assert_complete(clean)
    assert metric(proc.url, "bridge_etl_stream_losses_total", reason="group_missing") >= 1
    assert proc.alive()
    assert proc.stop() == 0


def test_group_lost_while_the_worker_is_down(
    spawn, event_env, clean, private_redis, namespace
) -> None:
    insert_rows(clean, 300)
    publish(private_redis.url, namespace, clean, "WHERE id <= 300")
    proc = spawn("etl", event_env)
    wait_for(lambda: target_sum(clean)[0] == 300, 30, "first rows")
    assert proc.stop() == 0
    insert_rows(clean, 700, start=300)
    publish(private_redis.url, namespace, clean, "WHERE id > 300")  # never read ...
    private_redis.restart(hard=True)  # ... and gone
    proc = spawn("etl", event_env)
    assert_complete(clean)
    assert metric(proc.url, "bridge_etl_stream_losses_total", reason="group_missing") == 1
    assert proc.stop() == 0


def test_first_start_is_not_a_loss(spawn, event_env, clean, private_redis, namespace) -> None:
    insert_rows(clean, 100)
    publish(private_redis.url, namespace, clean)
    proc = spawn("etl", event_env)
    assert_complete(clean)
    assert metric(proc.url, "bridge_etl_stream_losses_total") == 0
    assert metric(proc.url, "bridge_etl_repairs_total") == 0
    assert proc.stop() == 0


def test_reconciliation_loads_rows_no_event_announced(
    spawn, event_env, clean, private_redis, namespace
) -> None:
    """A loss no consumer can see (events lost before anyone read them, e.g. a failover to
    a replica that missed them) is closed by the periodic reconciliation."""
    insert_rows(clean, 50)
    publish(private_redis.url, namespace, clean, "WHERE id <= 10")
    proc = spawn("etl", {**event_env, "BRIDGE_ETL_REPAIR_INTERVAL": "1"})
    assert_complete(clean)
    wait_for(
        lambda: metric(proc.url, "bridge_etl_repairs_total", reason="reconciliation") >= 1,
        20,
        "a reconciliation counted",
    )
    assert proc.stop() == 0


def test_once_in_event_mode_repairs_before_exiting(
    spawn, event_env, clean, private_redis, namespace
) -> None:
    insert_rows(clean, 100)
    publish(private_redis.url, namespace, clean, "WHERE id <= 100")
    proc = spawn("etl", event_env)
    wait_for(lambda: target_sum(clean)[0] == 100, 30, "first rows")
    assert proc.stop() == 0
    insert_rows(clean, 1000, start=100)
    publish(private_redis.url, namespace, clean, "WHERE id > 100", maxlen=30)
    once = spawn("etl", event_env, args=["--once"], wait_ready=False)
    assert once.proc is not None and once.proc.wait(60) == 0
    assert target_sum(clean) == source_sum(clean)
    assert duplicates(clean) == 0


def test_trim_past_the_group_on_a_cluster(spawn, etl_env, clean, namespace, tmp_path) -> None:
    """The check-and-read script runs on Redis Cluster too (one key, one slot)."""
    with redis_cluster(tmp_path / "cluster", 3) as cluster:
        env = {
            **etl_env,
            "BRIDGE_REDIS_CLUSTER_NODES": cluster.nodes_env,
            "BRIDGE_ETL_MODE": "event",
            "BRIDGE_ETL_REPAIR_INTERVAL": "0",
        }
        insert_rows(clean, 200)
        publish("", namespace, clean, "WHERE id <= 200", nodes=cluster.nodes_env)
        proc = spawn("etl", env)
        wait_for(lambda: target_sum(clean)[0] == 200, 30, "first rows")
        assert proc.stop() == 0
        insert_rows(clean, 2000, start=200)
        publish("", namespace, clean, "WHERE id > 200", maxlen=30, nodes=cluster.nodes_env)
        proc = spawn("etl", env)
        assert_complete(clean)
        assert metric(proc.url, "bridge_etl_stream_losses_total", reason="trimmed") >= 1
        assert proc.stop() == 0


def test_redis_going_back_in_time_is_repaired(
    spawn, event_env, clean, private_redis, namespace
) -> None:
    """Redis comes back with older data (like a failover to a replica that missed writes):
    the group's position is behind what the worker read. Events published meanwhile that
    no one read are gone with it; the repair loads them from the source."""
    insert_rows(clean, 100)
    publish(private_redis.url, namespace, clean, "WHERE id <= 100")
    proc = spawn("etl", event_env)
    wait_for(lambda: target_sum(clean)[0] == 100, 30, "first rows")
    with redis.Redis.from_url(private_redis.url) as r:
        r.save()  # the "replica": the data as of now
    insert_rows(clean, 100, start=100)
    publish(private_redis.url, namespace, clean, "WHERE id BETWEEN 101 AND 200")
    wait_for(lambda: target_sum(clean)[0] == 200, 30, "rows read after the save")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)  # the worker reads nothing of what follows
    try:
        insert_rows(clean, 300, start=200)
        publish(private_redis.url, namespace, clean, "WHERE id > 200")
        private_redis.restart(hard=True)  # comes back from the save: ids 101.. are gone
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    assert_complete(clean)
    assert metric(proc.url, "bridge_etl_stream_losses_total", reason="went_back") >= 1
    assert proc.stop() == 0
