"""Several subscriptions over one connection, filters, a consumer slower than the stream
(bounded queue, paused and resumed without loss), and clean close."""

from __future__ import annotations

import asyncio

import pytest
from bridge_client import BridgeClient, ClientClosed, DuplicateSubscription

from tests.client.stream import Collector, ticker
from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess


async def test_two_topics_and_a_filter_share_one_connection(
    module_gateway: ServiceProcess, module_redis: RedisNode, namespace: str
) -> None:
    async with (
        ticker(module_redis.url, namespace, "alpha") as alpha,
        ticker(module_redis.url, namespace, "beta") as beta,
        BridgeClient(module_gateway.url) as client,
    ):
        a = client.subscribe("alpha")
        b = client.subscribe("beta", filter={"status": ["failed", "corrected"]})
        async with asyncio.timeout(15):
            await a.wait_live()
            await b.wait_live()
        seen_a, seen_b = Collector(a), Collector(b)
        statuses = ["ok", "failed", "ok", "corrected", "failed"]
        for n, status in enumerate(statuses, start=1):
            await alpha.publish(n)
            await beta.publish(n, status=status)
        assert await seen_a.wait_for(5) == [1, 2, 3, 4, 5]
        assert await seen_b.wait_for(3) == [2, 4, 5]
        assert client.connections == 1
        assert client.transport == "websocket"
        with pytest.raises(DuplicateSubscription):
            client.subscribe("alpha")
        await seen_a.stop()
        await seen_b.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_slow_consumer_with_a_small_queue_still_sees_everything_once(
    module_gateway: ServiceProcess, module_redis: RedisNode, namespace: str, transport: str
) -> None:
    total = 300
    async with (
        ticker(module_redis.url, namespace, f"burst_{transport}") as tick,
        BridgeClient(module_gateway.url, transport=transport, queue_size=16) as client,
    ):
        sub = client.subscribe(f"burst_{transport}")
        async with asyncio.timeout(15):
            await sub.wait_live()
        for n in range(1, total + 1):
            await tick.publish(n)
        await asyncio.sleep(0.5)  # the queue overflows meanwhile
        seen: list[int] = []
        async with asyncio.timeout(30):
            async for event in sub:
                seen.append(event.data["n"])
                if len(seen) == total:
                    break
        assert seen == list(range(1, total + 1))


async def test_close_ends_iteration_and_unsubscribes(
    module_gateway: ServiceProcess, module_redis: RedisNode, namespace: str
) -> None:
    async with ticker(module_redis.url, namespace, "closing") as tick:
        client = BridgeClient(module_gateway.url)
        async with client:
            sub = client.subscribe("closing")
            async with asyncio.timeout(15):
                await sub.wait_live()
            await tick.publish(1)
            async with asyncio.timeout(10):
                assert (await anext(sub)).data["n"] == 1
            async with sub:
                pass  # leaving the block unsubscribes
            assert sub.closed
            with pytest.raises(StopAsyncIteration):
                await anext(sub)
            again = client.subscribe("closing")  # the topic is free again
            async with asyncio.timeout(15):
                await again.wait_live()
            waiting = asyncio.create_task(anext(again))
            await asyncio.sleep(0.1)
        # leaving the client ends every iterator
        async with asyncio.timeout(5):
            with pytest.raises(StopAsyncIteration):
                await waiting
        with pytest.raises(ClientClosed):
            client.subscribe("closing")
