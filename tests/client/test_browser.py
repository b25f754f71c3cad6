"""The browser client (`/client.js`, served by the real gateway) in headless Chromium:
a page on its own origin consumes a steady stream while the gateway is killed (-9) and
restarted; the same through a proxy without WebSocket (EventSource fallback); and
history_lost reaches `onError` while the subscription carries on; and a resume from before
a Redis data loss, served from the PostgreSQL history."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from tests.client.conftest import JWT_SECRET
from tests.client.proxies import no_websocket_proxy, static_page
from tests.client.stream import ticker
from tests.support.cluster import RedisNode, redis_server
from tests.support.history import insert_rows, wait_history, wait_in_redis, watched_table
from tests.support.processes import ServiceProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# one Chromium for the module: its fixture and the tests share the module's event loop
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


def page_html(
    gateway_url: str,
    topic: str,
    options: dict[str, Any],
    since: str | None,
    tokens: list[str] | None = None,
) -> str:
    """A page that imports the gateway's client.js and records what it sees on `window`.

    `tokens`: what the page's tokenProvider answers, in turn (the last one repeats)."""
    provider = ""
    if tokens is not None:
        provider = f"""
  const tokens = {json.dumps(tokens)};
  options.tokenProvider = async () => tokens.length > 1 ? tokens.shift() : tokens[0];"""
    return f"""<!doctype html><meta charset="utf-8"><title>client.js test</title>
<script type="module">
  import {{ BridgeClient }} from "{gateway_url}/client.js";
  window.seen = []; window.errors = []; window.lives = [];
  const options = {json.dumps(options)};{provider}
  const client = new BridgeClient("{gateway_url}", options);
  window.client = client;
  client.subscribe("{topic}", {{
    since: {json.dumps(since)},
    onEvent: (e) => window.seen.push(e.data.n),
    onError: (err) => window.errors.push(err.code),
    onLive: (recovered) => window.lives.push(recovered),
  }});
</script>"""


async def open_page(browser: Browser, html: str) -> tuple[Page, Any]:
    server = static_page(html)
    url = await server.__aenter__()
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    await page.goto(url)
    page.console = console  # type: ignore[attr-defined]
    return page, server


async def wait_for(page: Page, expression: str, timeout: float = 30.0) -> None:
    try:
        await page.wait_for_function(expression, timeout=timeout * 1000)
    except Exception as exc:
        state = await page.evaluate(
            "({seen: window.seen && window.seen.length, last: window.seen && window.seen.slice(-5),"
            " errors: window.errors, transport: window.client && window.client.transport})"
        )
        raise AssertionError(f"{expression}: {state}; console {page.console}") from exc  # type: ignore[attr-defined]


FAST = {"backoff": {"base": 100, "cap": 1000, "healthyAfter": 1000}}


@pytest.mark.parametrize("via_proxy", [False, True], ids=["websocket", "eventsource-fallback"])
async def test_browser_sees_every_event_once_across_a_gateway_crash(
    browser: Browser,
    gateway: ServiceProcess,
    private_redis: RedisNode,
    namespace: str,
    via_proxy: bool,
) -> None:
    total = 300
    async with (
        ticker(private_redis.url, namespace, "ticks", interval=0.01) as tick,
        no_websocket_proxy(gateway.port) as (proxy_url, refused),
    ):
        base = proxy_url if via_proxy else gateway.url
        page, server = await open_page(browser, page_html(base, "ticks", FAST, None))
        try:
            await wait_for(page, "window.lives.length >= 1")
            tick.start(total)
            await wait_for(page, "window.seen.length >= 80")
            await asyncio.to_thread(gateway.stop, signal.SIGKILL)
            await asyncio.to_thread(gateway.start)
            await tick.finish()
            await wait_for(page, f"window.seen.length >= {total}", timeout=45)
            await asyncio.sleep(0.3)
            seen = await page.evaluate("window.seen")
            transport = await page.evaluate("window.client.transport")
            connections = await page.evaluate("window.client.connections")
        finally:
            await page.close()
            await server.__aexit__(None, None, None)
    assert seen == list(range(1, total + 1))
    assert transport == ("sse" if via_proxy else "websocket")
    assert connections >= 2
    if via_proxy:
        assert refused, "the page never tried WebSocket first"


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_browser_reports_history_lost_then_stays_live(
    browser: Browser,
    module_gateway: ServiceProcess,
    module_redis: RedisNode,
    namespace: str,
    transport: str,
) -> None:
    topic = f"trimmed_{transport}"
    async with ticker(module_redis.url, namespace, topic, maxlen=10) as tick:
        for n in range(1, 401):
            await tick.publish(n)
        options = {**FAST, "transport": transport}
        page, server = await open_page(
            browser, page_html(module_gateway.url, topic, options, tick.ids[1])
        )
        try:
            await wait_for(page, "window.errors.includes('history_lost') && window.lives.length")
            assert await page.evaluate("window.lives") == [False]
            await tick.publish(401)
            await wait_for(page, "window.seen.length >= 1")
            assert await page.evaluate("window.seen") == [401]
            assert await page.evaluate("window.client.transport") == transport
        finally:
            await page.close()
            await server.__aexit__(None, None, None)


async def test_browser_asks_the_token_provider_again_after_a_refused_token(
    browser: Browser, module_jwt_gateway: ServiceProcess, module_redis: RedisNode, namespace: str
) -> None:
    claims = {"sub": "page", "exp": int(time.time()) + 300, "topics": ["secured"]}
    stale = jwt.encode(claims, "an-old-secret-that-was-rotated-away-0123456789", algorithm="HS256")
    good = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    async with ticker(module_redis.url, namespace, "secured") as tick:
        page, server = await open_page(
            browser, page_html(module_jwt_gateway.url, "secured", FAST, None, [stale, good])
        )
        try:
            await wait_for(page, "window.lives.length >= 1")
            assert await page.evaluate("window.client.tokenRequests") >= 2
            await tick.publish(1)
            await wait_for(page, "window.seen.length >= 1")
            assert await page.evaluate("window.seen") == [1]
            assert await page.evaluate("window.errors") == []
        finally:
            await page.close()
            await server.__aexit__(None, None, None)


async def test_browser_reads_a_cross_origin_401_and_stops(
    browser: Browser, module_jwt_gateway: ServiceProcess
) -> None:
    """The page is on another origin: only because the gateway's 401 carries CORS headers
    can client.js read it, report `unauthorized` and stop instead of retrying forever."""
    claims = {"sub": "page", "exp": int(time.time()) + 300, "topics": ["secured"]}
    stale = jwt.encode(claims, "an-old-secret-that-was-rotated-away-0123456789", algorithm="HS256")
    options = {**FAST, "token": stale}
    page, server = await open_page(
        browser, page_html(module_jwt_gateway.url, "secured", options, None)
    )
    try:
        await wait_for(page, "window.errors.length >= 1")
        assert await page.evaluate("window.errors") == ["unauthorized"]
        assert await page.evaluate("window.client.fatal && window.client.fatal.code") == (
            "unauthorized"
        )
        assert await page.evaluate("window.client.subscriptions.length") == 0
        assert await page.evaluate("window.client.connections") == 0
    finally:
        await page.close()
        await server.__aexit__(None, None, None)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_browser_resumes_from_the_history_after_redis_lost_its_data(
    browser: Browser,
    spawn: Any,
    bridge_env: dict[str, str],
    migrated_dsn: str,
    tmp_path: Path,
    transport: str,
) -> None:
    """Redis without persistence is killed and comes back empty: a page resuming with an
    id from before gets every later event once, in order — from the PostgreSQL history,
    then Redis, then live."""
    topic = f"lost_{transport}"
    with redis_server(tmp_path, appendonly=False) as rds:
        env = {**bridge_env, "BRIDGE_REDIS_URL": rds.url, "BRIDGE_GATEWAY_REDIS_RETRY": "0.2"}
        await watched_table(migrated_dsn, topic)
        spawn("notifier", env)
        gateway = spawn("gateway", env)
        await insert_rows(migrated_dsn, topic, 1, 10)
        ids = await wait_history(migrated_dsn, topic, 10)
        await wait_in_redis(rds, env["BRIDGE_NAMESPACE"], topic, ids[-1])
        await asyncio.to_thread(rds.restart, hard=True)
        await insert_rows(migrated_dsn, topic, 11, 5)
        ids = await wait_history(migrated_dsn, topic, 15)
        await wait_in_redis(rds, env["BRIDGE_NAMESPACE"], topic, ids[-1])
        options = {**FAST, "transport": transport}
        page, server = await open_page(browser, page_html(gateway.url, topic, options, ids[0]))
        try:
            await wait_for(page, "window.seen.length >= 14 && window.lives.length")
            assert await page.evaluate("window.lives") == [True]
            await insert_rows(migrated_dsn, topic, 16, 1)
            await wait_for(page, "window.seen.length >= 15")
            await asyncio.sleep(0.3)
            assert await page.evaluate("window.seen") == list(range(2, 17))
            assert await page.evaluate("window.errors") == []
        finally:
            await page.close()
            await server.__aexit__(None, None, None)
