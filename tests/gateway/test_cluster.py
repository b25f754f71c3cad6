"""The gateway on a real 3-primary Redis Cluster: sharded pub/sub (SSUBSCRIBE) for topics
on different shards, live delivery and resume from the stream."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from bridge_common.channels import Channels
from bridge_common.events import event_fragment
from bridge_common.redis import EventPublisher, create_redis
from bridge_common.settings import BridgeSettings
from redis.asyncio.cluster import RedisCluster

from tests.gateway.conftest import connect, events_until, subscribe, token
from tests.support.cluster import LocalRedisCluster, redis_cluster
from tests.support.infra import unique_name

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    with tempfile.TemporaryDirectory(prefix="bridge-gw-cluster-") as tmp:
        with redis_cluster(Path(tmp), 3) as c:
            yield c


@pytest.fixture
async def cluster_client(cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    c = create_redis(BridgeSettings(BRIDGE_REDIS_CLUSTER_NODES=cluster.nodes_env))
    assert isinstance(c, RedisCluster)
    await c.initialize()
    yield c
    await c.aclose()


def _spread(cluster: LocalRedisCluster, ch: Channels) -> list[str]:
    by_node: dict[int, str] = {}
    for name in ("intents", "audit_logs", *(f"topic_{i}" for i in range(64))):
        by_node.setdefault(cluster.node_for_key(ch.stream(name)), name)
    return [by_node[i] for i in sorted(by_node)]


async def test_sharded_fanout_and_resume(spawn, gw_env, cluster, cluster_client) -> None:
    ns = unique_name("t", "gw_cluster")
    ch = Channels(ns)
    topics = _spread(cluster, ch)
    assert len(topics) == 3
    pub = EventPublisher(cluster_client, ch)
    env = {**gw_env, "BRIDGE_NAMESPACE": ns, "BRIDGE_REDIS_CLUSTER_NODES": cluster.nodes_env}
    proc = spawn("gateway", env)
    first: dict[str, str] = {}
    for t in topics:  # makes the topics known, and gives a position to resume from
        [first[t]] = await pub.publish(t, [(None, event_fragment("insert", "0", {"id": 0}, ""))])
    async with await connect(proc, tok=token(["*"])) as ws:
        for t in topics:
            assert (await subscribe(ws, t))[-1]["type"] == "subscribed"
        expected = []
        for i in range(1, 4):
            for t in topics:
                [eid] = await pub.publish(
                    t, [(None, event_fragment("insert", str(i), {"id": i}, ""))]
                )
                expected.append((t, eid))
        got = await events_until(ws, len(expected))
        assert sorted((m["topic"], m["id"]) for m in got) == sorted(expected)
    async with await connect(proc, tok=token(["*"])) as ws:
        for t in topics:
            replies = await subscribe(ws, t, since=first[t])
            assert [m["key"] for m in replies if m["type"] == "event"] == ["1", "2", "3"]
            assert replies[-1] == {"type": "subscribed", "topic": t, "recovered": True}
