"""The gateway's own Redis goes away with clients connected: it reconnects, re-subscribes
and fills the gap from the streams — connected clients miss nothing (WS and SSE).

Uses a PRIVATE redis-server (AOF, fsync always) on a free port, killed and restarted here.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from httpx_sse import aconnect_sse
from redis.asyncio import Redis

from tests.gateway.conftest import Injector, connect, metric, recv_json, subscribe, token
from tests.support.cluster import REDIS_SERVER
from tests.support.infra import free_port, unique_name


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


async def _wait_ready(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "gateway did not become ready again"
            await asyncio.sleep(0.05)


async def test_redis_restart_with_clients_connected_leaves_no_gap(
    spawn, gw_env, private_redis
) -> None:
    ns = unique_name("t", "gw_redis_restart")
    env = {
        **gw_env,
        "BRIDGE_REDIS_URL": private_redis.url,
        "BRIDGE_NAMESPACE": ns,
        # a slow first retry guarantees events land while the gateway is disconnected
        "BRIDGE_GATEWAY_REDIS_RETRY": "1.0",
    }
    client = Redis.from_url(private_redis.url)
    inject = Injector(client, ns)
    await inject.register("things")
    proc = spawn("gateway", env)
    tok = token(["things"])
    published: list[str] = []

    sse_ids: list[str] = []
    sse_live = asyncio.Event()

    async def sse_reader() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=30)) as http:
            url = proc.url + "/events/things"
            async with aconnect_sse(
                http, "GET", url, params={"token": tok, "close_after": "150"}
            ) as es:
                async for sse in es.aiter_sse():
                    if sse.event == "subscribed":
                        sse_live.set()
                    elif sse.event == "things":
                        sse_ids.append(sse.id)

    sse_task = asyncio.create_task(sse_reader())
    async with await connect(proc, tok=tok) as ws:
        await subscribe(ws, "things")
        await asyncio.wait_for(sse_live.wait(), 10)
        published += await inject.rows("things", [{"id": f"before{i}"} for i in range(50)])

        private_redis.kill()
        await asyncio.sleep(0.3)  # the gateway notices and backs off
        private_redis.start()
        await client.aclose()
        client = Redis.from_url(private_redis.url)
        inject = Injector(client, ns)
        # published while the gateway is still disconnected: only the gap fill can deliver them
        published += await inject.rows("things", [{"id": f"gap{i}"} for i in range(50)])
        await _wait_ready(proc.url)
        published += await inject.rows("things", [{"id": f"after{i}"} for i in range(50)])

        ws_ids: list[str] = []
        while len(ws_ids) < 150:
            msg = await recv_json(ws, 15)
            assert msg["type"] == "event", msg
            ws_ids.append(msg["id"])
    await asyncio.wait_for(sse_task, 20)
    assert ws_ids == published
    assert sse_ids == published
    assert metric(proc, "bridge_gateway_redis_reconnects_total") >= 1
    await client.aclose()


async def test_two_replicas_both_deliver(spawn, gw_env, inject, redis_client, namespace) -> None:
    a = spawn("gateway", gw_env)
    b = spawn("gateway", gw_env)
    tok = token(["*"])
    async with await connect(a, tok=tok) as wa, await connect(b, tok=tok) as wb:
        await subscribe(wa, "audit_logs")
        await subscribe(wb, "audit_logs", filter={"severity": "error"})
        ids = await inject.rows(
            "audit_logs", [{"id": i, "severity": "error" if i % 2 else "info"} for i in range(20)]
        )
        got_a = [(await recv_json(wa))["id"] for _ in range(20)]
        got_b = [(await recv_json(wb))["id"] for _ in range(10)]
        assert got_a == ids and got_b == ids[1::2]
        # both replicas publish their connection count for the metrics API
        from bridge_common.channels import Channels
        from bridge_common.events import decode_heartbeat

        deadline = time.monotonic() + 10
        while True:
            beats = await redis_client.hgetall(Channels(namespace).services)
            counts = {
                decode_heartbeat(v).status.get("port"): decode_heartbeat(v).status.get(
                    "connections"
                )
                for k, v in beats.items()
                if k.startswith(b"gateway/")
            }
            if counts.get(a.port) == 1 and counts.get(b.port) == 1:
                break
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(0.1)
