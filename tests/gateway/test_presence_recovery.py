"""Presence recovers: a Redis that loses everything (each replica writes its members
again) and a Redis Cluster (per-topic keys on different shards)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from bridge_common.channels import Channels
from bridge_common.redis import create_redis
from bridge_common.settings import BridgeSettings

from tests.gateway.presence_support import TOPIC, listed_subs, watch
from tests.gateway.test_redis_restart import REDIS_SERVER, PrivateRedis
from tests.support.cluster import redis_cluster
from tests.support.infra import unique_name
from tests.support.processes import ServiceProcess
from tests.support.waiting import eventually_async as eventually


async def test_redis_restart_rebuilds_presence(
    spawn: Callable[..., ServiceProcess],
    presence_env: dict[str, str],
    opened: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """A private Redis loses everything: each replica writes its members again, and the
    watchers' lists come back to exactly the right one."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        env = {**presence_env, "BRIDGE_REDIS_URL": server.url}
        topics_key = Channels(env["BRIDGE_NAMESPACE"]).topics
        with redis.Redis.from_url(server.url) as r:
            r.sadd(topics_key, TOPIC)
        a = spawn("gateway", env)
        b = spawn("gateway", env)
        w = await watch(a, "watch-a")
        await opened(a, "a1")
        await opened(b, "b1")
        await opened(b, "hidden", presence=False)
        everyone = ["a1", "b1", "watch-a"]
        await eventually(lambda: w.subs() == everyone, what="list before the restart")

        server.kill()
        for leftover in tmp_path.iterdir():  # no persistence: the data is gone
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        server.start()
        with redis.Redis.from_url(server.url) as r:
            r.sadd(topics_key, TOPIC)
        await eventually(lambda: listed_subs(a) == everyone, timeout=20, what="rebuilt in Redis")
        await eventually(lambda: listed_subs(b) == everyone, what="rebuilt, read on B")
        await opened(b, "b2")  # changes flow again after the rebuild
        await eventually(
            lambda: w.subs() == ["a1", "b1", "b2", "watch-a"], timeout=20, what="watcher list"
        )
        assert "hidden" not in w.seen_subs
        await w.close()
    finally:
        server.kill()


@pytest.mark.e2e
async def test_presence_on_a_redis_cluster(
    spawn: Callable[..., ServiceProcess],
    presence_env: dict[str, str],
    opened: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Per-topic keys share the topic's hash tag: the scripts and SPUBLISH work on a
    3-primary cluster, for topics on different shards."""
    with redis_cluster(tmp_path / "cluster", 3) as cluster:
        ns = unique_name("t", "presence_cluster")
        ch = Channels(ns)
        by_node: dict[int, str] = {}
        for name in (TOPIC, *(f"topic_{i}" for i in range(64))):
            by_node.setdefault(cluster.node_for_key(ch.presence_index(name)), name)
        topics = [by_node[i] for i in sorted(by_node)]
        client = create_redis(BridgeSettings(BRIDGE_REDIS_CLUSTER_NODES=cluster.nodes_env))
        try:
            await client.sadd(ch.topics, *topics)
        finally:
            await client.aclose()
        env = {
            **presence_env,
            "BRIDGE_NAMESPACE": ns,
            "BRIDGE_REDIS_CLUSTER_NODES": cluster.nodes_env,
        }
        a = spawn("gateway", env)
        b = spawn("gateway", env)
        watchers = [await watch(a, f"w-{t}", t) for t in topics]
        try:
            for t in topics:
                await opened(a, f"a-{t}", t)
                await opened(b, f"b-{t}", t)
            for w, t in zip(watchers, topics, strict=True):
                want = sorted([f"a-{t}", f"b-{t}", f"w-{t}"])
                await eventually(lambda w=w, want=want: w.subs() == want, what=f"list of {t}")
                assert listed_subs(b, t) == want
            b.kill()
            for w, t in zip(watchers, topics, strict=True):
                want = sorted([f"a-{t}", f"w-{t}"])
                await eventually(lambda w=w, want=want: w.subs() == want, what=f"{t} after kill")
        finally:
            for w in watchers:
                await w.close()
