"""bridge_common's Redis bus on a real 3-primary Redis Cluster: the client, the atomic
publish script (SPUBLISH), sharded pub/sub receipt, topic spread over the shards, the
leader lease and service heartbeats."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis
from bridge_common.channels import Channels
from bridge_common.events import decode_heartbeat, event_fragment
from bridge_common.redis import EventPublisher, RedisLease, create_redis, is_cluster
from bridge_common.settings import BridgeSettings
from redis.asyncio.cluster import RedisCluster

from tests.support.cluster import LocalRedisCluster
from tests.support.infra import unique_name
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.e2e


def spread_topics(cluster: LocalRedisCluster, ch: Channels, count: int = 3) -> list[str]:
    """Topic names whose keys live on `count` different primaries, plus the contract's."""
    by_node: dict[int, str] = {}
    for name in ("intents", "audit_logs", "alerts", *(f"topic_{i}" for i in range(64))):
        by_node.setdefault(cluster.node_for_key(ch.stream(name)), name)
        if len(by_node) == count:
            break
    return [by_node[i] for i in sorted(by_node)]


@pytest.fixture
async def client(local_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    settings = BridgeSettings(BRIDGE_REDIS_CLUSTER_NODES=local_cluster.nodes_env)
    c = create_redis(settings)
    assert isinstance(c, RedisCluster) and is_cluster(c)
    # the async cluster client learns the slot map lazily; pubsub() needs it up front
    await c.initialize()
    yield c
    await c.aclose()


@pytest.fixture
def ns() -> str:
    return unique_name("tc")


async def test_create_redis_uses_the_cluster(client: RedisCluster, ns: str) -> None:
    await client.ping()
    # keys in many slots: the client routes each to its owner (no MOVED surfaces)
    keys = [f"{ns}:{{k{i}}}" for i in range(30)]
    for i, k in enumerate(keys):
        await client.set(k, i, ex=60)
    assert [int(await client.get(k)) for k in keys] == list(range(30))
    nodes = {n.name for n in client.get_primaries()}
    assert len(nodes) == 3


async def test_topics_spread_over_all_shards(local_cluster: LocalRedisCluster, ns: str) -> None:
    ch = Channels(ns)
    topics = spread_topics(local_cluster, ch)
    assert len(topics) == 3
    owners = {local_cluster.node_for_key(ch.stream(t)) for t in topics}
    assert owners == {0, 1, 2}
    for t in topics:
        # everything about one topic shares the `{topic}` hash tag, hence one slot
        owner = local_cluster.node_for_key(ch.stream(t))
        assert local_cluster.node_for_key(ch.live(t)) == owner
        assert local_cluster.node_for_key(ch.dedupe(t)) == owner
    # the suite-wide registries share the `{namespace}` tag
    ns_owner = local_cluster.node_for_key(ch.services)
    for key in (ch.topics, ch.heartbeats, ch.leader("x"), ch.snapshot_stream, ch.alert_state):
        assert local_cluster.node_for_key(key) == ns_owner


async def test_publish_spublishes_and_appends_on_each_shard(
    client: RedisCluster, local_cluster: LocalRedisCluster, ns: str
) -> None:
    ch = Channels(ns)
    topics = spread_topics(local_cluster, ch)
    pub = EventPublisher(client, ch, maxlen=1000)
    ps = client.pubsub()
    for t in topics:
        await ps.ssubscribe(ch.live(t))
    # each shard confirms its subscription
    confirmed = 0
    deadline = time.monotonic() + 5
    while confirmed < len(topics) and time.monotonic() < deadline:
        m = await ps.get_sharded_message(timeout=0.5)
        if m is not None and m["type"] in ("ssubscribe", b"ssubscribe"):
            confirmed += 1
    assert confirmed == len(topics)

    published: dict[str, list[str]] = {}
    for t in topics:
        frags = [(i, event_fragment("insert", f"{t}-{i}", {"n": i}, "ts")) for i in (1, 2, 3)]
        ids = await pub.publish(t, frags)
        assert all(ids) and ids == sorted(ids)
        again = await pub.publish(t, [frags[0], (4, event_fragment("insert", f"{t}-4", {}, "t"))])
        assert again[0] is None and again[1] is not None  # idempotent on the cluster too
        published[t] = [*(i for i in ids if i), again[1]]

    received: dict[str, list[dict[str, Any]]] = {t: [] for t in topics}
    deadline = time.monotonic() + 10
    while sum(map(len, received.values())) < 4 * len(topics) and time.monotonic() < deadline:
        m = await ps.get_sharded_message(ignore_subscribe_messages=True, timeout=0.5)
        if m is None:
            continue
        ev = orjson.loads(m["data"])
        received[ev["topic"]].append(ev)
    for t in topics:
        assert [e["id"] for e in received[t]] == published[t]
        assert [e["key"] for e in received[t]] == [f"{t}-1", f"{t}-2", f"{t}-3", f"{t}-4"]

    # each topic's stream sits on its own primary and nowhere else
    for t in topics:
        holders = []
        for i, node in enumerate(local_cluster.nodes):
            with redis.Redis(port=node.port) as direct:
                try:
                    length = direct.xlen(ch.stream(t))
                except redis.exceptions.MovedError:
                    continue  # not this primary's slot
                holders.append(i)
                assert length == 4
        assert holders == [local_cluster.node_for_key(ch.stream(t))]
    assert await client.smembers(ch.topics) == {t.encode() for t in topics}
    await ps.aclose()


async def test_publish_survives_script_flush_on_a_primary(
    client: RedisCluster, local_cluster: LocalRedisCluster, ns: str
) -> None:
    ch = Channels(ns)
    topic = spread_topics(local_cluster, ch)[1]
    pub = EventPublisher(client, ch)
    assert (await pub.publish(topic, [(None, event_fragment("insert", "a", {}, "t"))]))[0]
    owner = local_cluster.nodes[local_cluster.node_for_key(ch.stream(topic))]
    with redis.Redis(port=owner.port) as direct:
        direct.script_flush()
    assert (await pub.publish(topic, [(None, event_fragment("insert", "b", {}, "t"))]))[0]


async def test_lease_on_the_cluster(client: RedisCluster, ns: str) -> None:
    key = Channels(ns).leader("test")
    a = RedisLease(client, key, "a", ttl=0.3)
    b = RedisLease(client, key, "b", ttl=0.3)
    assert await a.acquire_or_renew()
    assert not await b.acquire_or_renew()
    assert await a.acquire_or_renew()
    assert await b.holder() == "a"
    await asyncio.sleep(0.5)
    assert await b.acquire_or_renew()
    assert not await a.acquire_or_renew()
    await b.release()
    assert await a.holder() is None


async def test_publish_after_primary_restart(
    client: RedisCluster, local_cluster: LocalRedisCluster, ns: str
) -> None:
    """A primary crash (kill -9) and restart: the client reconnects, AOF kept the stream."""
    ch = Channels(ns)
    topic = spread_topics(local_cluster, ch)[2]
    owner = local_cluster.node_for_key(ch.stream(topic))
    pub = EventPublisher(client, ch)
    first = await pub.publish(topic, [(1, event_fragment("insert", "1", {}, "t"))])
    await asyncio.to_thread(local_cluster.restart_primary, owner)
    deadline = time.monotonic() + 20
    while True:
        try:
            again = await pub.publish(
                topic, [(seq, event_fragment("insert", str(seq), {}, "t")) for seq in (1, 2)]
            )
            break
        except (redis.exceptions.RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    assert again[0] is None and again[1] is not None and again[1] > str(first[0])
    entries = await client.xrange(ch.stream(topic))
    assert [e[1][b"seq"] for e in entries] == [b"1", b"2"]


def test_service_heartbeats_on_the_cluster(
    local_cluster: LocalRedisCluster,
    migrated_dsn: str,
    ns: str,
    spawn: Callable[..., ServiceProcess],
) -> None:
    """A real service process publishes heartbeats into `{ns}:services` on the cluster."""
    env = {
        "BRIDGE_SOURCE_DSN": migrated_dsn,
        "BRIDGE_TARGET_DSN": migrated_dsn,
        "BRIDGE_REDIS_CLUSTER_NODES": local_cluster.nodes_env,
        "BRIDGE_NAMESPACE": ns,
        "BRIDGE_HEARTBEAT_INTERVAL": "0.3",
        "BRIDGE_AUTH": "disabled",
    }
    proc = spawn("notifier", env)
    ch = Channels(ns)
    c = local_cluster.client()
    try:
        deadline = time.monotonic() + 15
        beats: dict[bytes, bytes] = {}
        while time.monotonic() < deadline and not beats:
            beats = c.hgetall(ch.services)
            time.sleep(0.1)
        assert beats, proc.logs()[-3000:]
        (field, raw), *_ = beats.items()
        hb = decode_heartbeat(raw)
        assert field.decode() == f"{hb.service}/{hb.instance}"
        assert hb.service == "notifier" and not hb.stale()
        first_ts = hb.ts
        while time.monotonic() < deadline:
            hb = decode_heartbeat(c.hget(ch.services, field))
            if hb.ts > first_ts:
                break
            time.sleep(0.1)
        assert hb.ts > first_ts  # renewed, not a one-off write
        assert proc.stop() == 0
        assert not c.hexists(ch.services, field)  # clean shutdown removes the entry
    finally:
        for key in c.scan_iter(match=f"{{{ns}}}:*", target_nodes=RedisCluster.ALL_NODES):
            c.delete(key)
        c.close()
