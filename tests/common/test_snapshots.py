from __future__ import annotations

import pytest
from bridge_common.channels import Channels
from bridge_common.events import MetricsSnapshot, decode_snapshot
from bridge_common.redis import create_redis
from bridge_common.settings import BridgeSettings
from bridge_common.snapshots import latest_snapshot, publish_snapshot, snapshot_from_entry


@pytest.fixture
async def client(redis_url: str):  # noqa: ANN201
    c = create_redis(BridgeSettings(BRIDGE_REDIS_URL=redis_url))
    yield c
    await c.aclose()


async def test_publish_snapshot_writes_stream_channel_and_latest(client, namespace: str) -> None:
    ch = Channels(namespace + "-snap")
    assert await latest_snapshot(client, ch) is None
    ps = client.pubsub()
    await ps.subscribe(ch.snapshot_channel)
    await ps.get_message(timeout=1)
    snaps = [MetricsSnapshot(ts=float(i), metrics={"a": i, "b": None}, source="x") for i in (1, 2)]
    for s in snaps:
        await publish_snapshot(client, ch, s, maxlen=10)
    entries = await client.xrange(ch.snapshot_stream)
    assert [snapshot_from_entry(f) for _, f in entries] == snaps
    assert await latest_snapshot(client, ch) == snaps[-1]
    got = []
    while len(got) < 2:
        m = await ps.get_message(timeout=2, ignore_subscribe_messages=True)
        assert m is not None
        got.append(m["data"])
    assert [decode_snapshot(g) for g in got] == snaps
    await ps.aclose()
    await client.delete(ch.snapshot_stream, ch.snapshot_latest)


async def test_snapshot_stream_is_bounded(client, namespace: str) -> None:
    ch = Channels(namespace + "-bounded")
    for i in range(300):
        await publish_snapshot(client, ch, MetricsSnapshot(ts=float(i), metrics={}), maxlen=10)
    # MAXLEN ~ trims whole stream nodes (100 entries by default): approximate, but bounded
    assert await client.xlen(ch.snapshot_stream) <= 110
    await client.delete(ch.snapshot_stream, ch.snapshot_latest)
