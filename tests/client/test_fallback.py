"""Transport choice and reconnect pacing against real sockets.

A proxy that cannot do WebSocket (answers the upgrade with 404, forwards everything else
to the real gateway) makes the client fall back to SSE; a server that answers every
upgrade with 503 shows the reconnect delays stay within the backoff bounds."""

from __future__ import annotations

import asyncio
import time

from bridge_client import Backoff, BridgeClient, backoff_ceiling

from tests.client.proxies import no_websocket_proxy
from tests.client.stream import Collector, ticker
from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess


async def test_falls_back_to_sse_when_the_upgrade_is_refused(
    module_gateway: ServiceProcess, module_redis: RedisNode, namespace: str
) -> None:
    async with (
        ticker(module_redis.url, namespace, "proxied") as tick,
        no_websocket_proxy(module_gateway.port) as (url, refused),
        BridgeClient(url) as client,
    ):
        sub = client.subscribe("proxied", filter={"kind": "keep"})
        async with asyncio.timeout(15):
            await sub.wait_live()
        assert client.transport == "sse"
        assert refused == ["/ws"]
        seen = Collector(sub)
        for n in range(1, 21):
            await tick.publish(n, kind="keep" if n % 2 else "skip")
        assert await seen.wait_for(10) == list(range(1, 21, 2))
        await seen.stop()


async def test_reconnect_delays_stay_within_the_backoff_bounds() -> None:
    """Every upgrade is answered 503 ("not now"): the client keeps retrying WebSocket,
    never faster than a hot loop and never slower than the cap allows."""
    attempts: list[float] = []

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        attempts.append(time.monotonic())
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(busy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    policy = Backoff(base=0.05, cap=0.4, healthy_after=5.0)
    try:
        async with BridgeClient(f"http://127.0.0.1:{port}", backoff=policy) as client:
            client.subscribe("anything")
            await asyncio.sleep(3.0)
            assert client.transport is None  # 503 is "retry", not "no WebSocket here"
    finally:
        server.close()
        await server.wait_closed()

    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert len(attempts) >= 4  # it kept trying
    # full jitter averages half the ceiling: 3 s at <= 0.2 s mean is far below 300 tries
    assert len(attempts) < 300
    slack = 1.0  # connect + scheduling on a shared, busy machine
    for i, gap in enumerate(gaps):
        assert gap <= backoff_ceiling(i, policy.base, policy.cap) + slack, (i, gaps)
    assert max(gaps) <= policy.cap + slack
