"""Overview's live connection count equals the WebSocket clients really connected, summed
over two real gateways, per replica and per topic — from the gateways' presence leases, the
source presence lists come from; a gateway that dies stops counting once its lease runs
out (hidden clients count too: they are connections, only never listed)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import redis
from bridge_common.channels import Channels
from websockets.sync.client import ClientConnection, connect

from tests.support.ops import ops_get


def wait_for(fetch: Callable[[], Any], want: Callable[[Any], bool], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fetch()
        if want(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"not reached in {timeout}s; last value: {last}")


def open_clients(
    stack: ExitStack, url: str, n: int, topic: str | None = None
) -> list[ClientConnection]:
    ws_url = url.replace("http://", "ws://") + "/ws"
    clients = [stack.enter_context(connect(ws_url, open_timeout=10)) for _ in range(n)]
    for c in clients:  # a round trip: the gateway has registered the connection
        if topic is not None:
            c.send(json.dumps({"type": "subscribe", "topic": topic}))
            assert '"subscribed"' in str(c.recv(timeout=10))
        c.send('{"type":"ping"}')
        assert '"pong"' in str(c.recv(timeout=10))
    return clients


def counts(g: dict[str, Any]) -> dict[str, Any]:
    return {k: g[k] for k in ("connections", "instances", "down")}


def by_topic(g: dict[str, Any]) -> dict[str, int]:
    return {t: v["subscriptions"] for t, v in g.get("topics", {}).items()}


def test_overview_counts_websocket_clients_across_two_gateways(
    spawn, bridge_env, migrated_dsn
) -> None:
    env = {**bridge_env, "BRIDGE_AUTH": "disabled"}
    gw1 = spawn("gateway", env)
    gw2 = spawn("gateway", env)
    api = spawn("metrics_api", {**env, "BRIDGE_SNAPSHOT_INTERVAL": "0.5"})

    def gateway() -> dict[str, Any]:
        body = ops_get(api.url + "/api/v1/dashboard/overview", timeout=10).json()
        return {**body["gateway"], "down": body["services"]["down"]}

    with redis.Redis.from_url(env["BRIDGE_REDIS_URL"]) as r:
        r.sadd(Channels(env["BRIDGE_NAMESPACE"]).topics, "rooms", "halls")
    first = wait_for(gateway, lambda g: g["instances"] == 2 and len(g.get("replicas", {})) == 2)
    assert first["connections"] == 0
    with ExitStack() as stack:
        a = open_clients(stack, gw1.url, 3, "rooms")
        open_clients(stack, gw2.url, 2, "rooms")
        open_clients(stack, gw2.url, 2, "halls")
        g = wait_for(gateway, lambda g: counts(g) == {"connections": 7, "instances": 2, "down": 0})
        g = wait_for(gateway, lambda g: by_topic(g) == {"rooms": 5, "halls": 2})
        assert sorted(g["replicas"].values()) == [3, 4]
        assert sorted(g["topics"]["rooms"]["replicas"].values()) == [2, 3]
        for c in a[:2]:
            c.close()
        wait_for(gateway, lambda g: g["connections"] == 5 and by_topic(g)["rooms"] == 3)
        # a crashed gateway leaves its lease behind; Redis drops it when it runs out
        gw2.kill()
        wait_for(gateway, lambda g: counts(g) == {"connections": 1, "instances": 1, "down": 1})
        assert wait_for(gateway, lambda g: by_topic(g) == {"rooms": 1})
    wait_for(gateway, lambda g: g["connections"] == 0)
