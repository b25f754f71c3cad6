"""Presence in the browser client (`/client.js` in headless Chromium, page on another
origin): `subscribe(topic, {presence: true, onPresence})` keeps `sub.presence`, a hidden
client never shows, and `client.presence(topic)` reads the list over HTTP (CORS)."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from bridge_client import BridgeClient
from playwright.async_api import Browser

from tests.client.conftest import JWT_SECRET
from tests.client.stream import ticker
from tests.client.test_browser import browser, open_page, wait_for  # noqa: F401 - fixture
from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")


def tok(sub: str, **claims: object) -> str:
    body = {"sub": sub, "exp": int(time.time() + 600), "topics": ["lobby"], **claims}
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


def page_html(gateway_url: str, token: str) -> str:
    return f"""<!doctype html><meta charset="utf-8"><title>presence</title>
<script type="module">
  import {{ BridgeClient }} from "{gateway_url}/client.js";
  window.changes = []; window.errors = [];
  const client = new BridgeClient("{gateway_url}", {{ token: {json.dumps(token)} }});
  window.client = client;
  window.sub = client.subscribe("lobby", {{
    presence: true,
    onPresence: (change) => window.changes.push(change),
    onError: (err) => window.errors.push(err.code),
  }});
  window.subs = () => [...window.sub.presence.values()].map((e) => e.sub).sort().join(",");
</script>"""


async def test_browser_presence_list_and_http_read(
    browser: Browser,  # noqa: F811 - the fixture imported above
    module_jwt_gateway: ServiceProcess,
    module_redis: RedisNode,
    namespace: str,
) -> None:
    gw = module_jwt_gateway
    async with (
        ticker(module_redis.url, namespace, "lobby"),
        BridgeClient(gw.url, token=tok("bob")) as bob,
        BridgeClient(gw.url, token=tok("eve", presence=False)) as eve,
    ):
        await bob.subscribe("lobby").wait_live()
        await eve.subscribe("lobby").wait_live()
        page, server = await open_page(browser, page_html(gw.url, tok("page", info={"tab": 1})))
        try:
            await wait_for(page, "window.subs() === 'bob,page'")
            first = await page.evaluate("window.changes[0]")
            assert first["full"] is True
            counts = await page.evaluate("window.sub.presenceCounts")
            assert counts == {"connections": 2, "subs": 2, "truncated": False}
            mine = await page.evaluate(
                "[...window.sub.presence.values()].find((e) => e.sub === 'page')"
            )
            assert mine["info"] == {"tab": 1}
            read = await page.evaluate("window.client.presence('lobby')")
            assert sorted(e["sub"] for e in read["present"]) == ["bob", "page"]
            count = await page.evaluate("window.client.presence('lobby', {count: true})")
            assert count == {"topic": "lobby", "connections": 2, "subs": 2}
            await bob.close()
            await wait_for(page, "window.subs() === 'page'")
            everyone = await page.evaluate(
                "window.changes.flatMap((c) => c.joins.concat(c.leaves)).map((e) => e.sub)"
            )
            assert "eve" not in everyone
            refused = await page.evaluate(
                "window.client.presence('elsewhere').then(() => null, (e) => e.code)"
            )
            assert refused == "forbidden"
        finally:
            await page.close()
            await server.__aexit__(None, None, None)
