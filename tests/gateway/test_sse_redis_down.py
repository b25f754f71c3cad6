"""An SSE request the gateway cannot answer because Redis does not: a JSON 503
`unavailable` refusal carrying the CORS headers, like every other refusal (docs/api.md),
not a bare 500 a browser on another origin cannot even read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.cluster import redis_server
from tests.support.processes import ServiceProcess


def test_sse_refusal_on_a_redis_error_is_json_with_cors(
    tmp_path: Path, namespace: str, spawn: Callable[..., ServiceProcess]
) -> None:
    with redis_server(tmp_path, appendonly=False) as node:
        env = {
            "BRIDGE_REDIS_URL": node.url,
            "BRIDGE_NAMESPACE": namespace,
            "BRIDGE_AUTH": "disabled",
            "BRIDGE_GATEWAY_ALLOWED_ORIGINS": "https://app.example.com",
        }
        gateway = spawn("gateway", env)
        node.kill()
        r = httpx.get(
            gateway.url + "/events/never_published",
            headers={"Origin": "https://app.example.com"},
            timeout=60,
        )
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "unavailable"
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert gateway.alive()  # and the gateway carries on
