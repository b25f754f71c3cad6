"""Durable history: PostgreSQL keeps what Redis forgets (issue #13).

Real PostgreSQL, the real notifier and gateway, and a PRIVATE non-persistent Redis per
test (no RDB, no AOF: a kill -9 and restart comes back empty, as Redis runs on most
machines). Clients resuming with an id older than the loss — over WebSocket, SSE and the
Python SDK — and clients connected across it get every committed event exactly once, in
order; ids are the same in Redis and in the history and keep increasing across the loss.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aredis
import websockets
from bridge_common.channels import Channels

from tests.support.cluster import RedisNode, redis_cluster, redis_server
from tests.support.history import (
    history_ids,
    insert_rows,
    stream_ids,
    until,
    wait_history,
    wait_in_redis,
    watched_table,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[RedisNode]:
    """A redis-server of our own without persistence: restarted, it comes back empty."""
    with redis_server(tmp_path, appendonly=False) as node:
        yield node


def _env(bridge_env: dict[str, str], node: RedisNode, **extra: str) -> dict[str, str]:
    return {
        **bridge_env,
        "BRIDGE_REDIS_URL": node.url,
        "BRIDGE_NOTIFIER_TOPICS_REFRESH": "0.5",
        "BRIDGE_GATEWAY_REDIS_RETRY": "0.2",
        **extra,
    }


# -- the three client kinds ---------------------------------------------------------------


async def _ws_resume(gw: ServiceProcess, topic: str, since: str, count: int) -> list[dict]:
    """Subscribe with `since`; the replayed events, then `subscribed`, then live ones up
    to `count` events in all."""
    url = gw.url.replace("http://", "ws://") + "/ws"
    out: list[dict] = []
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "since": since}))
        async with asyncio.timeout(30):
            while sum(1 for m in out if m["type"] == "event") < count or not any(
                m["type"] == "subscribed" for m in out
            ):
                out.append(json.loads(await ws.recv()))
                assert out[-1]["type"] != "error", out[-1]
    return out


async def _sse_resume(gw: ServiceProcess, topic: str, since: str, count: int) -> list[dict]:
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(30)) as http:
        async with http.stream(
            "GET",
            f"{gw.url}/events/{topic}",
            params={"close_after": str(count)},
            headers={"Last-Event-ID": since},
        ) as resp:
            assert resp.status_code == 200
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line == "":
                    if data:
                        msg = json.loads("\n".join(data))
                        assert msg.get("type") != "error", msg
                        if msg.get("type") == "event":
                            events.append(msg)
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
    return events


async def _sdk_resume(gw: ServiceProcess, topic: str, since: str, count: int) -> list[Any]:
    from bridge_client import BridgeClient

    got = []
    async with BridgeClient(gw.url) as client:
        sub = client.subscribe(topic, since=since)
        async with asyncio.timeout(30):
            while len(got) < count:
                got.append(await anext(sub))
    return got


def _keys(events: list[dict]) -> list[str]:
    return [e["key"] for e in events if e.get("type", "event") == "event"]


async def _every_client_resumes(
    gw: ServiceProcess, topic: str, since: str, expected: list[str], ids: list[str]
) -> None:
    ws = await _ws_resume(gw, topic, since, len(expected))
    events = [m for m in ws if m["type"] == "event"]
    assert _keys(events) == expected
    assert [e["id"] for e in events] == ids
    subscribed = [m for m in ws if m["type"] == "subscribed"]
    assert subscribed and subscribed[0]["recovered"] is True
    sse = await _sse_resume(gw, topic, since, len(expected))
    assert _keys(sse) == expected and [e["id"] for e in sse] == ids
    sdk = await _sdk_resume(gw, topic, since, len(expected))
    assert [e.key for e in sdk] == expected and [e.id for e in sdk] == ids


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["kill9_restart_empty", "flushall"])
async def test_resume_older_than_a_redis_loss_gets_every_event_once_in_order(
    spawn, bridge_env, migrated_dsn, namespace, volatile_redis, loss: str
) -> None:
    topic = f"lost_{loss[:5]}"
    await watched_table(migrated_dsn, topic)
    env = _env(bridge_env, volatile_redis)
    spawn("notifier", env)
    gw = spawn("gateway", env)

    before = await insert_rows(migrated_dsn, topic, 0, 20)
    ids_before = await wait_history(migrated_dsn, topic, 20)
    await wait_in_redis(volatile_redis, namespace, topic, ids_before[-1])
    # what Redis held before the loss is what the history holds: same ids
    assert await stream_ids(volatile_redis.url, namespace, topic) == ids_before

    if loss == "flushall":
        r = aredis.Redis.from_url(volatile_redis.url)
        await r.flushall()
        await r.aclose()
    else:
        await asyncio.to_thread(volatile_redis.restart, hard=True)
    assert await stream_ids(volatile_redis.url, namespace, topic) == []

    after = await insert_rows(migrated_dsn, topic, 20, 10)
    ids = await wait_history(migrated_dsn, topic, 30)
    await wait_in_redis(volatile_redis, namespace, topic, ids[-1])
    # ids keep increasing across the loss, and Redis holds the new ones under the same ids
    assert ids[:20] == ids_before
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    assert await stream_ids(volatile_redis.url, namespace, topic) == ids[20:]

    # a client that saw the first event resumes: 2..30 from history then Redis, then live
    since = ids[0]
    await _every_client_resumes(gw, topic, since, (before + after)[1:], ids[1:])
    # a client whose id lies inside Redis's new window is served from Redis alone
    await _every_client_resumes(gw, topic, ids[24], after[5:], ids[25:])


async def test_clients_connected_across_a_redis_restart_miss_nothing(
    spawn, bridge_env, migrated_dsn, namespace, volatile_redis
) -> None:
    topic = "across"
    await watched_table(migrated_dsn, topic)
    env = _env(bridge_env, volatile_redis, BRIDGE_GATEWAY_REDIS_RETRY="1.0")
    spawn("notifier", env)
    gw = spawn("gateway", env)
    url = gw.url.replace("http://", "ws://") + "/ws"
    total = 60

    sse_events: list[dict] = []

    async def sse_reader() -> None:
        sse_events.extend(await _sse_resume_live(gw, topic, total))

    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        sse = asyncio.create_task(sse_reader())
        await asyncio.sleep(0)  # the SSE stream subscribes (checked by its count below)
        keys = await insert_rows(migrated_dsn, topic, 0, 20)
        await wait_history(migrated_dsn, topic, 20)
        await asyncio.to_thread(volatile_redis.kill)
        # committed while Redis is down: the notifier moves them into the history, then
        # waits for Redis; the gateway is disconnected
        keys += await insert_rows(migrated_dsn, topic, 20, 20)
        await asyncio.to_thread(volatile_redis.start)
        keys += await insert_rows(migrated_dsn, topic, 40, 20)
        ws_events = []
        async with asyncio.timeout(40):
            while len(ws_events) < total:
                msg = json.loads(await ws.recv())
                assert msg["type"] == "event", msg
                ws_events.append(msg)
        await asyncio.wait_for(sse, 40)
    ids = await history_ids(migrated_dsn, topic)
    assert _keys(ws_events) == keys and [e["id"] for e in ws_events] == ids
    assert _keys(sse_events) == keys and [e["id"] for e in sse_events] == ids


async def _sse_resume_live(gw: ServiceProcess, topic: str, count: int) -> list[dict]:
    events: list[dict] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(60)) as http:
        async with http.stream(
            "GET", f"{gw.url}/events/{topic}", params={"close_after": str(count)}
        ) as resp:
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line == "":
                    if data:
                        msg = json.loads("\n".join(data))
                        assert msg.get("type") != "error", msg
                        if msg.get("type") == "event":
                            events.append(msg)
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
    return events


async def test_notifier_killed_between_history_commit_and_publish_loses_and_duplicates_nothing(
    spawn, bridge_env, migrated_dsn, namespace, volatile_redis
) -> None:
    topic = "inflight"
    await watched_table(migrated_dsn, topic)
    env = _env(bridge_env, volatile_redis)
    notifier = spawn("notifier", env)
    first = await insert_rows(migrated_dsn, topic, 0, 10)
    ids = await wait_history(migrated_dsn, topic, 10)
    await wait_in_redis(volatile_redis, namespace, topic, ids[-1])
    # Redis stops answering: the next batches are committed into the history, their
    # publish fails — exactly the state a kill -9 between the two leaves — then kill -9
    volatile_redis.proc.send_signal(19)  # SIGSTOP: connections hang, nothing is lost
    try:
        second = await insert_rows(migrated_dsn, topic, 10, 15)
        # the first batch after the stop is committed into the history; its publish hangs
        await wait_history(migrated_dsn, topic, 11)
        notifier.kill()
    finally:
        volatile_redis.proc.send_signal(18)  # SIGCONT
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT last_ms || '-' || last_n, pub_ms || '-' || pub_n FROM "
            "bridge.history_topics WHERE topic = %s",
            (topic,),
        )
        last, pub = await cur.fetchone()  # type: ignore[misc]
    assert last != pub, "the kill left no history event unpublished"
    spawn("notifier", env)
    all_ids = await wait_history(migrated_dsn, topic, 25)
    await wait_in_redis(volatile_redis, namespace, topic, all_ids[-1])
    assert await stream_ids(volatile_redis.url, namespace, topic) == all_ids
    gw = spawn("gateway", env)
    await _every_client_resumes(gw, topic, all_ids[0], (first + second)[1:], all_ids[1:])


async def test_id_older_than_the_retention_is_history_lost_and_old_partitions_dropped(
    spawn, bridge_env, migrated_dsn, namespace, volatile_redis
) -> None:
    topic = "retained"
    await watched_table(migrated_dsn, topic)
    old_ms = int(time.time() * 1000) - 3 * 3_600_000
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        # an event published three hours ago, in its own hourly partition
        await conn.execute("SELECT bridge.history_ensure(%s, %s)", (old_ms, old_ms + 1))
        await conn.execute(
            "INSERT INTO bridge.history (topic, ms, n, op, key, payload, ts) "
            "VALUES (%s, %s, 0, 'insert', 'old', '{}', now())",
            (topic, old_ms),
        )
        await conn.execute(
            "INSERT INTO bridge.history_topics (topic, last_ms, last_n, pub_ms, pub_n, "
            "first_ms) VALUES (%s, %s, 0, %s, 0, %s)",
            (topic, old_ms, old_ms, old_ms),
        )

        async def partitions() -> int:
            cur = await conn.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'bridge.history'::regclass "
                "AND inhrelid::regclass::text LIKE %s",
                ("bridge.history_" + time.strftime("%Y%m%dh%H", time.gmtime(old_ms / 1000)),),
            )
            return int((await cur.fetchone())[0])  # type: ignore[index]

        assert await partitions() == 1
        env = _env(bridge_env, volatile_redis, BRIDGE_HISTORY_RETENTION="90m")
        spawn("notifier", env)
        gw = spawn("gateway", env)
        keys = await insert_rows(migrated_dsn, topic, 0, 5)
        ids = await wait_history(migrated_dsn, topic, 5)

        async def dropped() -> bool:
            return await partitions() == 0

        await until(dropped, 20, "the old partition to be dropped")
        cur = await conn.execute("SELECT complete_from_ms FROM bridge.history_horizon")
        assert (await cur.fetchone())[0] > old_ms  # type: ignore[index]
    assert ids[0] > f"{old_ms}-0"
    r = aredis.Redis.from_url(volatile_redis.url)
    await r.flushall()
    await r.aclose()

    url = gw.url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "since": f"{old_ms}-0"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert first["type"] == "error" and first["code"] == "history_lost", first
        assert "retention" in first["message"]
    # an id inside the retention still replays from the history
    resumed = await _sse_resume(gw, topic, ids[0], 4)
    assert _keys(resumed) == keys[1:]


async def test_a_row_larger_than_max_event_bytes_becomes_an_event_that_says_so(
    spawn, bridge_env, migrated_dsn, namespace, volatile_redis
) -> None:
    topic = "big"
    await watched_table(migrated_dsn, topic)
    env = _env(bridge_env, volatile_redis, BRIDGE_MAX_EVENT_BYTES="4096")
    notifier = spawn("notifier", env)
    gw = spawn("gateway", env)
    url = gw.url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "filter": {"n": 1}}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        await insert_rows(migrated_dsn, topic, 100, 1, note="first")  # n=100: filtered out
        await insert_rows(migrated_dsn, topic, 0, 1, note="x" * 10_000)
        await insert_rows(migrated_dsn, topic, 1, 1, note="small")
        big = json.loads(await asyncio.wait_for(ws.recv(), 15))
        small = json.loads(await asyncio.wait_for(ws.recv(), 15))
    # the big row reaches even a filtered subscriber (its filter cannot be evaluated)
    assert big["key"] == "k0" and big["too_large"] is True and "data" not in big
    assert big["size"] > 10_000 and big["op"] == "insert" and big["ts"]
    assert small["key"] == "k1" and small["data"]["note"] == "small"
    assert _metric(notifier, "bridge_notifier_events_too_large_total") == 1
    # the history keeps the same event: after Redis forgets, the replay is byte-identical
    r = aredis.Redis.from_url(volatile_redis.url)
    await r.flushall()
    await r.aclose()
    ids = await history_ids(migrated_dsn, topic)
    replay = await _sse_resume(gw, topic, ids[0], 2)
    assert replay == [big, small]
    assert [e["id"] for e in replay] == ids[1:]


def _metric(proc: ServiceProcess, name: str) -> float:
    total = 0.0
    for line in httpx.get(proc.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_history_database_unreachable_is_history_lost_saying_so(
    spawn, bridge_env, migrated_dsn, namespace, volatile_redis
) -> None:
    from tests.support.infra import free_port

    topic = "unreachable"
    await watched_table(migrated_dsn, topic)
    env = _env(bridge_env, volatile_redis)
    spawn("notifier", env)
    gw = spawn(
        "gateway",
        {**env, "BRIDGE_HISTORY_DSN": f"postgresql://postgres@127.0.0.1:{free_port()}/none"},
    )
    await insert_rows(migrated_dsn, topic, 0, 3)
    ids = await wait_history(migrated_dsn, topic, 3)
    await wait_in_redis(volatile_redis, namespace, topic, ids[-1])
    # inside Redis's window the history database is not needed
    assert _keys(await _sse_resume(gw, topic, ids[0], 2)) == ["k1", "k2"]
    r = aredis.Redis.from_url(volatile_redis.url)
    await r.flushall()
    await r.aclose()
    url = gw.url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "since": ids[0]}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert first["type"] == "error" and first["code"] == "history_lost", first
        assert "cannot be reached" in first["message"]
        subscribed = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert subscribed == {"type": "subscribed", "topic": topic, "recovered": False}
        # and it carries on live
        await insert_rows(migrated_dsn, topic, 3, 1)
        live = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert live["type"] == "event" and live["key"] == "k3"


async def test_a_cluster_primary_that_comes_back_empty_is_filled_from_the_history(
    spawn, bridge_env, migrated_dsn, namespace, tmp_path: Path
) -> None:
    """A 3-primary Redis Cluster without persistence: the primary holding the topic is
    killed and restarted empty (what a failover to a replica that missed the writes leaves
    too). A connected client and a resuming one get every event once, in order."""
    topic = "sharded"
    await watched_table(migrated_dsn, topic)
    with redis_cluster(tmp_path, 3, appendonly=False) as cluster:
        env = {
            **bridge_env,
            "BRIDGE_REDIS_CLUSTER_NODES": cluster.nodes_env,
            "BRIDGE_NOTIFIER_TOPICS_REFRESH": "0.5",
            "BRIDGE_GATEWAY_REDIS_RETRY": "0.2",
        }
        spawn("notifier", env)
        gw = spawn("gateway", env)
        owner = cluster.node_for_key(Channels(namespace).stream(topic))
        url = gw.url.replace("http://", "ws://") + "/ws"
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 15))["type"] == "subscribed"
            keys = await insert_rows(migrated_dsn, topic, 0, 10)
            ids = await wait_history(migrated_dsn, topic, 10)
            live = [json.loads(await asyncio.wait_for(ws.recv(), 15)) for _ in range(10)]
            assert [e["id"] for e in live] == ids
            await asyncio.to_thread(cluster.restart_primary, owner, hard=True)
            keys += await insert_rows(migrated_dsn, topic, 10, 10)
            ids = await wait_history(migrated_dsn, topic, 20)
            async with asyncio.timeout(40):
                while len(live) < 20:
                    msg = json.loads(await ws.recv())
                    assert msg["type"] == "event", msg
                    live.append(msg)
        assert _keys(live) == keys and [e["id"] for e in live] == ids
        # a client that saw only the first event resumes across the loss
        resumed = await _sse_resume(gw, topic, ids[0], 19)
        assert _keys(resumed) == keys[1:] and [e["id"] for e in resumed] == ids[1:]
