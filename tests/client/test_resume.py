"""Exactly once across crashes: a client consumes a steady stream while the gateway is
killed (-9) and restarted, Redis is killed (-9) and restarted, and the gateway is shut
down gracefully (1001) and restarted. The client's sequence has no gap and no duplicate."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from bridge_client import Backoff, BridgeClient

from tests.client.stream import Collector, gaps_and_duplicates, ticker
from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess

FAST = Backoff(base=0.1, cap=1.0, healthy_after=1.0)


async def _restart(gateway: ServiceProcess, sig: int) -> None:
    await asyncio.to_thread(gateway.stop, sig)
    await asyncio.to_thread(gateway.start)


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_no_gap_no_duplicate_across_gateway_and_redis_crashes(
    gateway: ServiceProcess, private_redis: RedisNode, namespace: str, transport: str
) -> None:
    total = 500
    async with (
        ticker(private_redis.url, namespace, "ticks", interval=0.01) as tick,
        BridgeClient(gateway.url, transport=transport, backoff=FAST) as client,
    ):
        sub = client.subscribe("ticks")
        async with asyncio.timeout(15):
            await sub.wait_live()
        seen = Collector(sub)
        tick.start(total)

        await seen.wait_for(80)
        await _restart(gateway, signal.SIGKILL)
        ready, before = time.monotonic(), len(seen.seen)
        await seen.wait_for(before + 1)
        # back within the backoff cap (plus generous slack for a busy shared machine)
        assert time.monotonic() - ready <= FAST.cap + 8.0

        await seen.wait_for(200)
        await asyncio.to_thread(private_redis.kill)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(private_redis.start)

        await seen.wait_for(320)
        await _restart(gateway, signal.SIGTERM)  # graceful: clients get 1001 going away

        await tick.finish()
        await seen.wait_for(total, timeout=45)
        await asyncio.sleep(0.3)  # anything extra would show up as a duplicate
        await seen.stop()

    missing, duplicates = gaps_and_duplicates(seen.seen, total)
    assert missing == [] and duplicates == []
    assert seen.seen == list(range(1, total + 1))
    assert seen.errors == []
    assert client.transport == transport
    assert client.connections >= 3  # it really reconnected


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_resume_from_since_replays_exactly_what_came_after(
    module_gateway: ServiceProcess, module_redis: RedisNode, namespace: str, transport: str
) -> None:
    async with ticker(module_redis.url, namespace, f"past_{transport}") as tick:
        for n in range(1, 31):
            await tick.publish(n)
        async with BridgeClient(module_gateway.url, transport=transport) as client:
            sub = client.subscribe(f"past_{transport}", since=tick.ids[20])
            seen = Collector(sub)
            assert await seen.wait_for(10, timeout=15) == list(range(21, 31))
            await sub.wait_live()
            assert sub.recovered is True
            await tick.publish(31)
            assert await seen.wait_for(11) == list(range(21, 32))
            assert sub.last_id == tick.ids[31]
            await seen.stop()
