"""Presence across the suite as real processes: the notifier publishes committed rows,
two gateways serve subscribers through the Python SDK, and the metrics API counts live
connections per topic and per replica from the same presence leases the lists come from —
hidden clients included there, never in a list; a gateway killed with -9 drops out of
both."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from bridge_client import BridgeClient

from tests.support.ops import OPS
from tests.support.processes import ServiceProcess
from tests.support.suite import JWT_SECRET, make_token
from tests.support.waiting import eventually_async as eventually

pytestmark = pytest.mark.e2e


def tok(sub: str, **claims: object) -> str:
    return make_token(["intents"], sub=sub, extra=dict(claims))


async def test_presence_and_live_counts_across_the_suite(
    spawn: Callable[..., ServiceProcess], bridge_env: dict[str, str], migrated_dsn: str
) -> None:
    env = {
        **bridge_env,
        "BRIDGE_AUTH": "jwt",
        "BRIDGE_JWT_SECRET": JWT_SECRET,
        "BRIDGE_HEARTBEAT_INTERVAL": "1",
    }
    spawn("notifier", env)
    a = spawn("gateway", env)
    b = spawn("gateway", env)
    api = spawn("metrics_api", {**env, "BRIDGE_SNAPSHOT_INTERVAL": "0.5"})
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO intents (title) VALUES ('makes the topic known')")
    # the topic exists once the notifier published that row
    await eventually(
        lambda: (
            httpx.get(f"{a.url}/presence/intents", params={"token": tok("x")}).status_code == 200
        ),
        what="intents published",
    )

    def topics() -> dict[str, Any]:
        body = httpx.get(api.url + "/api/v1/dashboard/overview", timeout=10, auth=OPS).json()
        return dict(body["gateway"].get("topics", {}))

    async with (
        BridgeClient(a.url, token=tok("ada", info={"desk": 7})) as ada,
        BridgeClient(b.url, token=tok("bob")) as bob,
        BridgeClient(b.url, token=tok("eve", presence=False)) as eve,
    ):
        watched = ada.subscribe("intents", presence=True)
        members = watched.presence
        assert members is not None
        plain = bob.subscribe("intents")
        hidden = eve.subscribe("intents")
        async with asyncio.timeout(30):
            await watched.wait_live()
            await plain.wait_live()
            await hidden.wait_live()
        await eventually(lambda: members.subs_present == {"ada", "bob"}, what="ada and bob")
        assert members.connections == 2

        # events and presence frames share the connection
        with psycopg.connect(migrated_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO intents (title) VALUES ('hello')")
        async with asyncio.timeout(15):
            event = await anext(watched)
        assert event.data["title"] == "hello"

        # the metrics API counts every subscription, per replica, from the same leases
        counts = await eventually(
            lambda: (t := topics()).get("intents", {}).get("subscriptions") == 3 and t,
            what="3 subscriptions on intents",
        )
        assert sorted(counts["intents"]["replicas"].values()) == [1, 2]
        listed = await ada.presence("intents")
        assert (listed.connections, sorted(e.sub for e in listed.present)) == (2, ["ada", "bob"])

        b.kill()
        await eventually(lambda: members.subs_present == {"ada"}, what="bob gone with B")
        assert members.connections == 1
        await eventually(
            lambda: topics().get("intents", {}).get("subscriptions") == 1, what="B's count gone"
        )
