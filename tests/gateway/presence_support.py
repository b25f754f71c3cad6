"""Presence test helpers: a watcher keeping the list its frames describe, the HTTP read."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx

from tests.gateway.conftest import connect, subscribe, token
from tests.support.processes import ServiceProcess

#: heartbeat of the gateways in presence tests (leases last 1.75 of these)
HEARTBEAT = 1.0
TOPIC = "things"


class Watcher:
    """A WebSocket subscribed with `presence: true`, keeping the list its frames describe."""

    def __init__(self, ws: Any, topic: str) -> None:
        self.ws = ws
        self.topic = topic
        self.members: dict[str, dict[str, Any]] = {}
        self.frames: list[dict[str, Any]] = []
        self.seen_subs: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Watcher:
        msgs = await subscribe(self.ws, self.topic, presence=True)
        assert msgs[-1]["type"] == "subscribed", msgs
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                msg = json.loads(await self.ws.recv())
                if msg["type"] != "presence" or msg["topic"] != self.topic:
                    continue
                self.frames.append(msg)
                if msg["full"]:
                    self.members = {}
                for e in msg["leaves"]:
                    self.members.pop(e["conn"], None)
                for e in msg["joins"]:
                    self.members[e["conn"]] = e
                    self.seen_subs.add(e["sub"])

    def subs(self) -> list[str]:
        return sorted(e["sub"] for e in self.members.values())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.ws.close()


async def watch(proc: ServiceProcess, sub: str, topic: str = TOPIC, **claims: Any) -> Watcher:
    ws = await connect(proc, tok=token([topic], sub=sub, **claims))
    return await Watcher(ws, topic).start()


def presence(proc: ServiceProcess, topic: str = TOPIC, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{proc.url}/presence/{topic}",
        params=params,
        headers={"Authorization": f"Bearer {token([topic])}"},
    )


def listed_subs(proc: ServiceProcess, topic: str = TOPIC) -> list[str]:
    r = presence(proc, topic)
    assert r.status_code == 200, r.text
    return sorted(e["sub"] for e in r.json()["present"])
