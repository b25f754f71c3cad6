"""history_lost: resuming from an id the stream no longer holds raises `HistoryLost`
from the iterator; the subscription then carries on live."""

from __future__ import annotations

import asyncio

import pytest
from bridge_client import BridgeClient, HistoryLost

from tests.client.stream import ticker
from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_trimmed_resume_point_raises_history_lost_then_goes_live(
    module_gateway: ServiceProcess, module_redis: RedisNode, namespace: str, transport: str
) -> None:
    topic = f"trimmed_{transport}"
    # MAXLEN ~ trims whole stream nodes (100 entries by default): 400 events with
    # maxlen 10 leave the first ones long gone.
    async with ticker(module_redis.url, namespace, topic, maxlen=10) as tick:
        for n in range(1, 401):
            await tick.publish(n)
        stream = tick.publisher.channels.stream(topic)
        first_kept = await tick.redis.xrange(stream, count=1)
        assert first_kept[0][0].decode() != tick.ids[1]

        async with BridgeClient(module_gateway.url, transport=transport) as client:
            sub = client.subscribe(topic, since=tick.ids[1])
            async with asyncio.timeout(15):
                with pytest.raises(HistoryLost) as lost:
                    await anext(sub)
                assert lost.value.topic == topic
                assert lost.value.since == tick.ids[1]
                # the caller reloads its state here; the subscription is live again
                await sub.wait_live()
                assert sub.recovered is False
                await tick.publish(401)
                event = await anext(sub)
            assert event.data["n"] == 401
            assert event.id == tick.ids[401]
