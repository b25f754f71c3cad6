"""`BRIDGE_GATEWAY_WORKERS=2`: one port, two worker processes, each its own gateway.

Clients spread over both workers (SO_REUSEPORT) and each receives every event; each
worker heartbeats as its own instance, so the metrics API's figures count both workers
and sum their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
from bridge_common.channels import Channels
from bridge_metrics_api import live
from httpx_sse import aconnect_sse

from tests.gateway.conftest import connect, recv_json, subscribe, token

WS_CLIENTS = 12
SSE_CLIENTS = 12


async def _gateways(redis_client: Any, namespace: str) -> list[live.Instance]:
    found = await live.instances(redis_client, Channels(namespace))
    return [i for i in found if i.hb.service == "gateway" and i.up]


async def _until(probe: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what} (last: {value!r})"
        await asyncio.sleep(0.1)


async def test_two_workers_share_the_port_and_the_counts(
    spawn, gw_env, inject, redis_client, namespace
) -> None:
    proc = spawn("gateway", {**gw_env, "BRIDGE_GATEWAY_WORKERS": "2"}, wait_ready=False)
    # three interpreters start at once (supervisor, two workers): slow on a busy machine
    proc.wait_ready(timeout=90)

    async def both_up() -> bool:
        gws = await _gateways(redis_client, namespace)
        return len({i.hb.instance for i in gws}) == 2

    await _until(both_up, "two gateway worker instances heartbeating", timeout=90)
    tok = token(["*"])
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(await connect(proc, tok=tok)) for _ in range(WS_CLIENTS)
        ]
        for ws in sockets:
            assert (await subscribe(ws, "audit_logs"))[-1]["type"] == "subscribed"
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=15))
        streams = []
        for _ in range(SSE_CLIENTS):
            source = await stack.enter_async_context(
                aconnect_sse(http, "GET", proc.url + "/events/audit_logs", params={"token": tok})
            )
            frames = source.aiter_sse()
            assert (await asyncio.wait_for(anext(frames), 10)).event == "subscribed"
            streams.append(frames)

        total = WS_CLIENTS + SSE_CLIENTS

        async def spread() -> dict[str, int] | None:
            gws = await _gateways(redis_client, namespace)
            per = {i.hb.instance: int(i.hb.status.get("connections", 0)) for i in gws}
            figures = live.figures(gws)
            counted = figures.gateway_instances == 2 and figures.gateway_connections == total
            return per if counted and all(per.values()) else None

        # the kernel spread the clients over both workers, and the sums are right
        per = await _until(spread, f"{total} connections summed over two busy workers")
        assert sum(per.values()) == total

        ids = await inject.rows("audit_logs", [{"id": i, "n": i} for i in range(5)])
        for ws in sockets:
            got = [(await recv_json(ws))["id"] for _ in range(len(ids))]
            assert got == ids
        for frames in streams:
            got = []
            while len(got) < len(ids):
                sse = await asyncio.wait_for(anext(frames), 10)
                if sse.event == "audit_logs":
                    got.append(sse.id)
            assert got == ids

    async def all_closed() -> bool:
        gws = await _gateways(redis_client, namespace)
        return len(gws) == 2 and live.figures(gws).gateway_connections == 0

    await _until(all_closed, "connections back to zero on both workers")
    assert proc.stop() == 0, proc.logs()[-4000:]
