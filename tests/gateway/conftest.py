"""Gateway test fixtures: an isolated namespace, tokens, event injection, WS/SSE helpers.

Events enter Redis exactly as the notifier puts them there (`EventPublisher.publish`), so
these tests do not need the notifier running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from bridge_common.channels import Channels
from bridge_common.events import event_fragment
from bridge_common.redis import EventPublisher
from redis.asyncio import Redis

from tests.support.processes import ServiceProcess

#: generated per run: a secret written in the repository is public, and the gateway refuses it
SECRET = "gateway-test-" + secrets.token_urlsafe(48)


def token(
    topics: list[str] | None = None,
    *,
    sub: str = "tester",
    ttl: float = 600,
    secret: str = SECRET,
    alg: str = "HS256",
    **extra: Any,
) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl), **extra}
    if topics is not None:
        claims["topics"] = topics
    return jwt.encode(claims, secret, algorithm=alg)


@pytest.fixture(scope="module")
def gw_env(redis_url: str, namespace: str) -> dict[str, str]:
    """Environment of a gateway with JWT auth on this module's namespace."""
    return {
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "info",
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
        "BRIDGE_AUTH": "jwt",
        "BRIDGE_JWT_SECRET": SECRET,
        "BRIDGE_GATEWAY_SSE_HEARTBEAT": "0.5",
        "BRIDGE_SHUTDOWN_TIMEOUT": "5",
    }


@pytest.fixture(scope="module")
def gateway(
    gw_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One gateway for the whole module (tests that restart it use `spawn`)."""
    proc = ServiceProcess("gateway", gw_env, Path(tmp_path_factory.mktemp("gw")))
    proc.start()
    yield proc
    code = proc.stop()
    assert code == 0, proc.logs()[-4000:]


def ws_url(proc: ServiceProcess, path: str = "/ws") -> str:
    return proc.url.replace("http://", "ws://") + path


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Injector:
    """Publishes rows as events on topics, the notifier's way."""

    def __init__(self, client: Redis, namespace: str, maxlen: int = 100_000) -> None:
        self.pub = EventPublisher(client, Channels(namespace), maxlen=maxlen)
        self.n = 0

    async def rows(self, topic: str, rows: list[dict[str, Any]], op: str = "insert") -> list[str]:
        items = []
        for row in rows:
            self.n += 1
            key = str(row.get("id", self.n))
            items.append((None, event_fragment(op, key, row, "2026-01-01T00:00:00+00:00")))
        ids = await self.pub.publish(topic, items)
        assert all(i is not None for i in ids)
        return [i for i in ids if i is not None]

    async def register(self, *topics: str) -> None:
        """Make topics known (the notifier adds a topic when it first publishes on it)."""
        for t in topics:
            await self.pub.client.sadd(self.pub.channels.topics, t)


@pytest.fixture
async def inject(redis_client: Redis, namespace: str) -> Injector:
    injector = Injector(redis_client, namespace)
    await injector.register("intents", "audit_logs", "things")
    return injector


async def recv_json(ws: Any, timeout: float = 10.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    msg: dict[str, Any] = json.loads(raw)
    return msg


async def subscribe(ws: Any, topic: str, **kw: Any) -> list[dict[str, Any]]:
    """Send subscribe; return every message up to and including `subscribed`."""
    await ws.send(json.dumps({"type": "subscribe", "topic": topic, **kw}))
    out = []
    while True:
        msg = await recv_json(ws)
        out.append(msg)
        if msg["type"] == "subscribed" and msg["topic"] == topic:
            return out
        if msg["type"] == "error" and msg.get("code") != "history_lost":
            return out


async def connect(
    proc: ServiceProcess, path: str = "/ws", tok: str | None = None, **kw: Any
) -> Any:
    headers = {"Authorization": f"Bearer {tok}"} if tok else None
    return await websockets.connect(ws_url(proc, path), additional_headers=headers, **kw)


async def events_until(ws: Any, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Collect `n` event messages (other messages are returned too, in order)."""
    out: list[dict[str, Any]] = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < n:
        msg = await recv_json(ws, max(0.1, deadline - time.monotonic()))
        out.append(msg)
        if msg["type"] == "event":
            got += 1
    return out


def metric(proc: ServiceProcess, name: str) -> float:
    """Sum of a Prometheus sample over its labels."""
    total = 0.0
    for line in httpx.get(proc.url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def presence_env(gw_env: dict[str, str]) -> dict[str, str]:
    """A gateway whose presence leases are short (1.75 × a 1 s heartbeat)."""
    from tests.gateway.presence_support import HEARTBEAT

    return {**gw_env, "BRIDGE_HEARTBEAT_INTERVAL": str(HEARTBEAT)}


@pytest.fixture
async def opened() -> AsyncIterator[Callable[..., Any]]:
    """Open WebSockets subscribed to a topic; all closed at the end of the test."""
    sockets: list[Any] = []

    async def _open(proc: ServiceProcess, sub: str, topic: str = "things", **claims: Any) -> Any:
        ws = await connect(proc, tok=token([topic], sub=sub, **claims))
        sockets.append(ws)
        msgs = await subscribe(ws, topic)
        assert msgs[-1]["type"] == "subscribed", msgs
        return ws

    yield _open
    for ws in sockets:
        with contextlib.suppress(Exception):
            await ws.close()
