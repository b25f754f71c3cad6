"""Overview's live connection count equals the WebSocket clients really connected, summed
over two real gateways; a gateway that dies stops counting once its heartbeat is stale."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

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


def open_clients(stack: ExitStack, url: str, n: int) -> list[ClientConnection]:
    ws_url = url.replace("http://", "ws://") + "/ws"
    clients = [stack.enter_context(connect(ws_url, open_timeout=10)) for _ in range(n)]
    for c in clients:  # a round trip: the gateway has registered the connection
        c.send('{"type":"ping"}')
        assert '"pong"' in str(c.recv(timeout=10))
    return clients


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

    assert wait_for(gateway, lambda g: g["instances"] == 2)["connections"] == 0
    with ExitStack() as stack:
        a = open_clients(stack, gw1.url, 3)
        open_clients(stack, gw2.url, 4)
        wait_for(gateway, lambda g: g == {"connections": 7, "instances": 2, "down": 0})
        for c in a[:2]:
            c.close()
        wait_for(gateway, lambda g: g["connections"] == 5)
        # a crashed gateway keeps its last heartbeat in Redis; it is counted until stale
        gw2.kill()
        wait_for(gateway, lambda g: g == {"connections": 1, "instances": 1, "down": 1})
    wait_for(gateway, lambda g: g["connections"] == 0)
