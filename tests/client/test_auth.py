"""Tokens: the provider is asked before every connection and again after a 401; a token
that stays refused ends the subscriptions with `Unauthorized`; a topic outside the
token's `topics` is `SubscriptionRejected("forbidden")`."""

from __future__ import annotations

import asyncio
import signal
import time

import jwt
import pytest
from bridge_client import Backoff, BridgeClient, SubscriptionRejected, Unauthorized

from tests.client.conftest import JWT_SECRET
from tests.client.stream import Collector, ticker
from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess

WRONG = "not-the-gateway-secret-0123456789abcdef"
FAST = Backoff(base=0.05, cap=0.5, healthy_after=1.0)


def make_token(topics: list[str] | None = None, secret: str = JWT_SECRET, ttl: int = 300) -> str:
    claims = {"sub": "client-test", "exp": int(time.time()) + ttl, "topics": topics or ["*"]}
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_provider_refreshes_after_401_and_on_every_reconnect(
    jwt_gateway: ServiceProcess, private_redis: RedisNode, namespace: str, transport: str
) -> None:
    issued: list[str] = []

    async def provider() -> str:
        # the first token is stale (signed with an old secret): the gateway answers 401
        token = make_token(secret="rotated-away-" + "x" * 32) if not issued else make_token()
        issued.append(token)
        return token

    async with (
        ticker(private_redis.url, namespace, "secured") as tick,
        BridgeClient(
            jwt_gateway.url, token_provider=provider, transport=transport, backoff=FAST
        ) as client,
    ):
        sub = client.subscribe("secured")
        async with asyncio.timeout(15):
            await sub.wait_live()
        assert len(issued) >= 2  # asked again after the 401
        seen = Collector(sub)
        await tick.publish(1)
        await seen.wait_for(1)

        asked = client.token_requests
        await asyncio.to_thread(jwt_gateway.stop, signal.SIGKILL)
        await asyncio.to_thread(jwt_gateway.start)
        await tick.publish(2)
        assert await seen.wait_for(2, timeout=20) == [1, 2]
        assert client.token_requests > asked  # a fresh token for the new connection
        await seen.stop()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_static_bad_token_ends_subscriptions_with_unauthorized(
    module_jwt_gateway: ServiceProcess, transport: str
) -> None:
    async with BridgeClient(
        module_jwt_gateway.url, token=make_token(secret=WRONG), transport=transport, backoff=FAST
    ) as client:
        sub = client.subscribe("anything")
        async with asyncio.timeout(15):
            with pytest.raises(Unauthorized) as refused:
                await anext(sub)
        assert refused.value.status == 401
        with pytest.raises(Unauthorized):
            client.subscribe("other")


async def test_provider_that_keeps_failing_gives_up_after_max_auth_failures(
    module_jwt_gateway: ServiceProcess,
) -> None:
    calls = 0

    def provider() -> str:  # plain callables are accepted too
        nonlocal calls
        calls += 1
        return make_token(secret=WRONG)

    async with BridgeClient(
        module_jwt_gateway.url, token_provider=provider, backoff=FAST, max_auth_failures=3
    ) as client:
        sub = client.subscribe("anything")
        async with asyncio.timeout(15):
            with pytest.raises(Unauthorized):
                await anext(sub)
    assert calls == 3


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_topic_outside_the_token_is_rejected_as_forbidden(
    module_jwt_gateway: ServiceProcess,
    module_redis: RedisNode,
    namespace: str,
    transport: str,
) -> None:
    async with (
        ticker(module_redis.url, namespace, f"mine_{transport}"),
        ticker(module_redis.url, namespace, f"theirs_{transport}"),
        BridgeClient(
            module_jwt_gateway.url,
            token=make_token([f"mine_{transport}"]),
            transport=transport,
            backoff=FAST,
        ) as client,
    ):
        allowed = client.subscribe(f"mine_{transport}")
        refused = client.subscribe(f"theirs_{transport}")
        async with asyncio.timeout(15):
            with pytest.raises(SubscriptionRejected) as rejected:
                await anext(refused)
            await allowed.wait_live()
        assert rejected.value.code == "forbidden"
        assert rejected.value.topic == f"theirs_{transport}"
        # a rejected subscription frees its topic: asking again is allowed (and refused again)
        again = client.subscribe(f"theirs_{transport}")
        async with asyncio.timeout(15):
            with pytest.raises(SubscriptionRejected):
                await anext(again)
        assert allowed.live
