from __future__ import annotations

import asyncio

import orjson
import pytest
from bridge_common.channels import Channels
from bridge_common.events import event_fragment
from bridge_common.redis import EventPublisher, RedisLease, create_redis
from bridge_common.settings import BridgeSettings


@pytest.fixture
async def client(redis_url: str):  # noqa: ANN201
    s = BridgeSettings(BRIDGE_REDIS_URL=redis_url)
    c = create_redis(s)
    yield c
    await c.aclose()


async def test_publish_appends_fans_out_and_dedupes(client, namespace: str) -> None:
    ch = Channels(namespace)
    pub = EventPublisher(client, ch, maxlen=1000)
    ps = client.pubsub()
    await ps.subscribe(ch.live("intents"))
    await ps.get_message(timeout=1)  # subscribe confirmation
    frags = [(i, event_fragment("insert", str(i), {"n": i}, "ts")) for i in (1, 2, 3)]
    ids = await pub.publish("intents", frags)
    assert all(ids) and ids == sorted(ids)
    again = await pub.publish("intents", [frags[1], (4, event_fragment("insert", "4", {}, "t"))])
    assert again[0] is None and again[1] is not None
    entries = await client.xrange(ch.stream("intents"))
    assert [e[1][b"seq"] for e in entries] == [b"1", b"2", b"3", b"4"]
    live = []
    while len(live) < 4:
        m = await ps.get_message(timeout=2, ignore_subscribe_messages=True)
        assert m is not None
        live.append(orjson.loads(m["data"]))
    assert [e["key"] for e in live] == ["1", "2", "3", "4"]
    assert [e["id"] for e in live] == [x.decode() for x, _ in entries]
    assert await client.sismember(ch.topics, "intents")
    await ps.aclose()


async def test_publish_without_seq_is_never_deduped(client, namespace: str) -> None:
    ch = Channels(namespace)
    pub = EventPublisher(client, ch)
    frag = event_fragment("insert", "a", {}, "t")
    ids = await pub.publish("alerts", [(None, frag), (None, frag)])
    assert len(set(ids)) == 2


async def test_script_reloaded_after_flush(client, namespace: str) -> None:
    pub = EventPublisher(client, Channels(namespace))
    await pub.publish("x", [(None, event_fragment("insert", "a", {}, "t"))])
    await client.script_flush()
    assert (await pub.publish("x", [(None, event_fragment("insert", "b", {}, "t"))]))[0]


async def test_lease_has_one_holder_and_expires(client, namespace: str) -> None:
    key = Channels(namespace).leader("test")
    a = RedisLease(client, key, "a", ttl=0.3)
    b = RedisLease(client, key, "b", ttl=0.3)
    assert await a.acquire_or_renew()
    assert not await b.acquire_or_renew()
    assert await a.acquire_or_renew()  # renew
    await asyncio.sleep(0.5)
    assert await b.acquire_or_renew()
    assert not await a.acquire_or_renew()
    await b.release()
    assert await a.acquire_or_renew()
