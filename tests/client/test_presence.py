"""Presence in the Python client: `subscribe(..., presence=True)` keeps the list of who is
subscribed, hidden clients stay hidden, the list is whole again after the gateway
restarts, and `client.presence(topic)` reads it over HTTP."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from bridge_client import BridgeClient, SubscriptionRejected, Unauthorized

from tests.client.conftest import JWT_SECRET
from tests.client.stream import ticker
from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess
from tests.support.waiting import eventually_async as eventually


def tok(sub: str, topics: list[str], **claims: object) -> str:
    body = {"sub": sub, "exp": int(time.time() + 600), "topics": topics, **claims}
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


async def test_presence_list_changes_and_http_read(
    module_jwt_gateway: ServiceProcess, module_redis: RedisNode, namespace: str
) -> None:
    gw = module_jwt_gateway
    async with (
        ticker(module_redis.url, namespace, "rooms"),
        BridgeClient(gw.url, token=tok("ada", ["rooms"], info={"name": "Ada"})) as ada,
        BridgeClient(gw.url, token=tok("bob", ["rooms"])) as bob,
        BridgeClient(gw.url, token=tok("eve", ["rooms"], presence=False)) as eve,
    ):
        watched = ada.subscribe("rooms", presence=True)
        plain = bob.subscribe("rooms")
        eve.subscribe("rooms")
        assert plain.presence is None
        assert watched.presence is not None
        members = watched.presence
        async with asyncio.timeout(15):
            await members.wait_ready()
        await eventually(lambda: members.subs_present == {"ada", "bob"}, what="ada and bob")
        [entry] = [e for e in members.members.values() if e.sub == "ada"]
        assert entry.info == {"name": "Ada"}
        assert (members.connections, members.subs, members.truncated) == (2, 2, False)
        first = await anext(members)
        assert first.full is True

        snapshot = await bob.presence("rooms")
        assert sorted(e.sub for e in snapshot.present) == ["ada", "bob"]
        assert (snapshot.connections, snapshot.subs) == (2, 2)

        await plain.close()
        await eventually(lambda: members.subs_present == {"ada"}, what="bob left")
        changes = []
        while not any(e.sub == "bob" for c in changes for e in c.leaves):
            async with asyncio.timeout(10):
                changes.append(await anext(members))
        assert "eve" not in {e.sub for c in changes for e in c.joins}

    async with BridgeClient(gw.url, token=tok("zed", ["other"])) as zed:
        with pytest.raises(SubscriptionRejected) as refused:
            await zed.presence("rooms")
        assert refused.value.code == "forbidden"
    async with BridgeClient(gw.url, token="not-a-token") as nobody:
        with pytest.raises(Unauthorized):
            await nobody.presence("rooms")


async def test_list_is_whole_again_after_a_gateway_restart(
    jwt_gateway: ServiceProcess, private_redis: RedisNode, namespace: str
) -> None:
    async with (
        ticker(private_redis.url, namespace, "rooms"),
        BridgeClient(jwt_gateway.url, token=tok("ada", ["rooms"])) as ada,
        BridgeClient(jwt_gateway.url, token=tok("bob", ["rooms"])) as bob,
    ):
        members = ada.subscribe("rooms", presence=True).presence
        assert members is not None
        bob.subscribe("rooms")
        await eventually(lambda: members.subs_present == {"ada", "bob"}, what="both listed")
        connections = ada.connections
        jwt_gateway.restart()
        await eventually(lambda: ada.connections > connections, timeout=20, what="reconnect")
        await eventually(
            lambda: members.ready and members.subs_present == {"ada", "bob"},
            timeout=20,
            what="the whole list again",
        )
        assert members.connections == 2
