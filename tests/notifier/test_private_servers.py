"""The notifier against servers this module owns: a PostgreSQL restarted under live
writers (with commit timestamps on), and a Redis Cluster (sharded pub/sub)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import psycopg
from bridge_common import migrate
from bridge_common.channels import Channels
from bridge_common.redis import create_redis
from bridge_common.settings import BridgeSettings
from redis.asyncio.cluster import RedisCluster

from tests.notifier.probes import metric
from tests.notifier.workload import (
    assert_exactly_once_in_order,
    create_watched_table,
    run_writers,
    stream_events,
    wait_stream_len,
)


async def test_postgres_restart_under_writers_and_ts_is_the_commit_time(
    spawn, private_postgres, redis_url, namespace, aredis_client
) -> None:
    dsn = private_postgres.dsn
    await migrate.apply(dsn, "source")
    await create_watched_table(dsn, "restarted")
    env = {
        "BRIDGE_SOURCE_DSN": dsn,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
    }
    proc = spawn("notifier", env)
    # a transaction that commits 0.5 s after it wrote its row
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("INSERT INTO restarted (id, w) VALUES (-1, -1)")
        await asyncio.sleep(0.5)
        before_commit = time.time()
        await conn.commit()
    writers = asyncio.create_task(
        run_writers(dsn, "restarted", writers=3, transactions=400, seed=21, pace=0.004)
    )
    await wait_stream_len(aredis_client, namespace, "restarted", 300, timeout=20)
    await asyncio.to_thread(private_postgres.restart)
    assert not writers.done()
    await writers
    await assert_exactly_once_in_order(dsn, aredis_client, namespace, "restarted")
    assert (metric(proc, "bridge_notifier_db_reconnects_total") or 0) >= 1
    assert '"commit_ts": true' in proc.logs()
    [first] = [
        ev for _, ev in await stream_events(aredis_client, namespace, "restarted") if ev.key == "-1"
    ]
    ts = datetime.fromisoformat(first.ts).timestamp()
    assert ts >= before_commit - 0.05, "ts is the commit time, not the time of the write"


async def test_on_a_redis_cluster_each_topic_on_its_shard(
    spawn, bridge_env, migrated_dsn, private_redis_cluster
) -> None:
    ns = "cl"
    ch = Channels(ns)
    by_node: dict[int, str] = {}
    for i in range(64):
        by_node.setdefault(
            private_redis_cluster.node_for_key(ch.stream(f"shard_{i}")), f"shard_{i}"
        )
    topics = [by_node[n] for n in sorted(by_node)][:2]
    assert len(topics) == 2
    for t in topics:
        await create_watched_table(migrated_dsn, t)
    env = {
        **bridge_env,
        "BRIDGE_NAMESPACE": ns,
        "BRIDGE_REDIS_CLUSTER_NODES": private_redis_cluster.nodes_env,
    }
    spawn("notifier", env)
    client = create_redis(
        BridgeSettings(BRIDGE_REDIS_CLUSTER_NODES=private_redis_cluster.nodes_env)
    )
    assert isinstance(client, RedisCluster)
    try:
        await client.initialize()
        ps = client.pubsub()
        await ps.ssubscribe(ch.live(topics[0]))
        confirmed = None
        deadline = time.monotonic() + 5
        while confirmed is None and time.monotonic() < deadline:
            confirmed = await ps.get_sharded_message(timeout=0.5)
        assert confirmed is not None and confirmed["type"] in ("ssubscribe", b"ssubscribe")
        await asyncio.gather(
            *(run_writers(migrated_dsn, t, writers=2, transactions=100, seed=31) for t in topics)
        )
        for t in topics:
            await assert_exactly_once_in_order(migrated_dsn, client, ns, t)
        live = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            m = await ps.get_sharded_message(ignore_subscribe_messages=True, timeout=0.5)
            if m is None:
                break
            live += 1
        assert live == await client.xlen(ch.stream(topics[0]))  # SPUBLISH fan-out, each once
        assert set(topics) <= {m.decode() for m in await client.smembers(ch.topics)}
        await ps.aclose()
    finally:
        await client.aclose()
