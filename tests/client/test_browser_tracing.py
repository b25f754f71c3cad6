"""`event.traceparent` in the browser client (`/client.js`, served by the real gateway, in
headless Chromium), over WebSocket and EventSource: present on events whose transaction
set `bridge.traceparent`, absent otherwise — live and on a resume."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from playwright.async_api import Browser

from tests.client.proxies import static_page
from tests.support.history import wait_history, watched_table

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    if not shutil.which(CHROMIUM):
        pytest.fail("Debian chromium is not installed (apt-get install -y chromium)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


def _page(gateway_url: str, topic: str, transport: str, since: str | None) -> str:
    options = {"transport": transport, "backoff": {"base": 100, "cap": 1000, "healthyAfter": 1000}}
    return f"""<!doctype html><meta charset="utf-8"><title>traceparent</title>
<script type="module">
  import {{ BridgeClient }} from "{gateway_url}/client.js";
  window.seen = []; window.lives = [];
  const client = new BridgeClient("{gateway_url}", {json.dumps(options)});
  client.subscribe("{topic}", {{
    since: {json.dumps(since)},
    onEvent: (e) => window.seen.push([e.key, "traceparent" in e ? e.traceparent : null]),
    onLive: (recovered) => window.lives.push(recovered),
  }});
</script>"""


async def _write(dsn: str, topic: str, key: str, traceparent: str | None) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            if traceparent is not None:
                await conn.execute(
                    "SELECT set_config('bridge.traceparent', %s, true)", (traceparent,)
                )
            await conn.execute(
                psycopg.sql.SQL("INSERT INTO {} (id, n) VALUES (%s, 0)").format(
                    psycopg.sql.Identifier(topic)
                ),
                (key,),
            )


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_the_page_sees_traceparent_only_on_traced_events(
    browser: Browser, spawn: Any, bridge_env: dict[str, str], migrated_dsn: str, transport: str
) -> None:
    topic = f"traced_{transport}"
    await watched_table(migrated_dsn, topic)
    env = {**bridge_env, "BRIDGE_NOTIFIER_TOPICS_REFRESH": "0.5"}
    spawn("notifier", env)
    gateway = spawn("gateway", env)
    await _write(migrated_dsn, topic, "old", TP)
    await wait_history(migrated_dsn, topic, 1)
    server = static_page(_page(gateway.url, topic, transport, "0-1"))
    url = await server.__aenter__()
    page = await browser.new_page()
    try:
        await page.goto(url)
        # a resume from before the first event replays it with its traceparent
        await page.wait_for_function("window.lives.length >= 1 && window.seen.length >= 1")
        await _write(migrated_dsn, topic, "traced", TP)
        await _write(migrated_dsn, topic, "plain", None)
        await page.wait_for_function("window.seen.length >= 3", timeout=30_000)
        await asyncio.sleep(0.2)
        seen = await page.evaluate("window.seen")
    finally:
        await page.close()
        await server.__aexit__(None, None, None)
    assert seen == [["old", TP], ["traced", TP], ["plain", None]]
