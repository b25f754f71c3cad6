"""The dashboard page in a real headless Chromium (Debian's `chromium`, driven by Playwright):
it shows the seeded figures, updates live as data changes, and logs no console errors."""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from bridge_common.channels import Channels
from playwright.sync_api import Browser, Page, sync_playwright

from tests.metrics_api.seed import (
    AuditRow,
    add_audit,
    add_intents,
    heartbeat,
    put_alert_states,
    put_heartbeats,
)
from tests.support.ops import login_url, ops_get
from tests.support.processes import ServiceProcess

CHROMIUM = os.environ.get("BRIDGE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not installed at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def dashboard(api_env, tmp_path_factory, db, r, namespace) -> Iterator[ServiceProcess]:  # noqa: ANN001
    now = datetime.now(UTC)
    rows = []
    for minute in range(1, 55):
        t = now - timedelta(minutes=minute)
        rows += [AuditRow(t) for _ in range(3 + minute % 5)]
        if minute % 7 == 0:
            rows.append(AuditRow(t, severity="warning"))
        if minute % 11 == 0:
            rows.append(AuditRow(t, severity="error", action="intent.failed"))
    rows.append(AuditRow(now - timedelta(minutes=3), severity="critical", action="intent.failed"))
    rows.append(
        AuditRow(
            now - timedelta(minutes=4),
            action="intent.corrected",
            severity="warning",
            actor="alice",
            intent_id=uuid.uuid4(),
            details={"reason": "amount fixed"},
        )
    )
    add_audit(db, rows)
    add_intents(db, "pending", 4, now)
    add_intents(db, "done", 9, now)
    add_intents(db, "failed", 1, now)
    put_heartbeats(
        r,
        namespace,
        [
            heartbeat(
                "gateway",
                "gateway-a",
                {
                    "connections": 41,
                    "delivery_lag": {"intents": {"p50": 0.012, "p99": 3.5, "count": 9}},
                },
            ),
            heartbeat(
                "notifier",
                "notifier-a",
                {
                    "lag_seconds": 0.12,
                    "outbox_backlog": 0,
                    "leader": True,
                    "commit_lag": {"intents": {"p50": 0.004, "p99": 0.02, "count": 9}},
                },
            ),
            heartbeat("etl", "etl-a", {"lag_seconds": 0.8}),
            heartbeat("etl", "etl-b", {"lag_seconds": 0.5}, age=60, interval=1),
        ],
    )
    put_alert_states(
        r,
        namespace,
        {
            "fp1": {
                "rule": "audit_error_rate_high",
                "state": "firing",
                "severity": "critical",
                "value": 0.071,
                "threshold": 0.05,
                "summary": "Audit error rate 0.071 above 0.05",
                "started_at": (now - timedelta(minutes=6)).isoformat(),
            }
        },
    )
    env = {**api_env, "BRIDGE_DASHBOARD_POLL_MS": "500"}
    proc = ServiceProcess("metrics_api", env, Path(tmp_path_factory.mktemp("dash")))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, list[str]]]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    p = context.new_page()
    problems: list[str] = []
    p.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    p.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    p.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    p.on(
        "response",
        lambda resp: (
            problems.append(f"HTTP {resp.status}: {resp.url}") if resp.status >= 400 else None
        ),
    )
    yield p, problems
    context.close()


def text(p: Page, selector: str) -> str:
    return p.locator(selector).inner_text().strip()


def wait_until(check, timeout: float = 30.0) -> None:  # noqa: ANN001
    """Poll `check()` (the page's CSP forbids Playwright's string-eval wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_dashboard_shows_live_data_without_console_errors(
    dashboard, page, db, tmp_path: Path
) -> None:
    p, problems = page
    p.goto(login_url(dashboard.url), wait_until="load")
    p.wait_for_selector("body[data-loaded='1']", timeout=15_000)
    overview = ops_get(dashboard.url + "/api/v1/dashboard/overview").json()

    # tiles show the API's figures
    assert text(p, "#t-connections") == "41"
    assert text(p, "#t-events") == str(overview["audit"]["5m"]["events"])
    assert text(p, "#t-intents") == "14"
    assert text(p, "#t-alerts") == "1"
    assert "bad" in (p.locator(".tile[data-key='alerts']").get_attribute("class") or "")
    assert text(p, "#t-corrections") == "1"
    assert text(p, "#t-notifier") == "120 ms"
    # the chart: one stacked bar per minute, coloured by severity, with a legend
    assert p.locator("#chart svg g.bar").count() in (60, 61)
    assert p.locator("#chart rect.sev-info").count() >= 50
    assert p.locator("#chart rect.sev-critical").count() == 1
    assert "critical 1" in (p.locator("#legend").text_content() or "")
    # lists
    assert "audit_error_rate_high" in text(p, "#alerts")
    assert "alice" in text(p, "#corrections") and "amount fixed" in text(p, "#corrections")
    # gateway, notifier, two ETL workers and this metrics API
    assert p.locator("#services tr").count() == 5
    assert "metrics_api" in text(p, "#services")
    assert p.locator("#services tr.down").count() == 1 and "etl-b" in text(p, "#services tr.down")
    assert "polling" in text(p, "#conn")
    # delivery lag per topic and hop (p50 / p99, last minute); the slow p99 stands out
    lag_row = p.locator("#lag tr").first
    assert text(p, "#lag tr td.name") == "intents"
    assert "4 ms / 20 ms" in lag_row.inner_text() and "12 ms / 3.5 s" in lag_row.inner_text()
    assert lag_row.locator("td.bad").count() == 1

    # live: new rows appear without a reload
    before = int(text(p, "#t-events").replace(",", ""))
    add_audit(db, [AuditRow(datetime.now(UTC), severity="error") for _ in range(7)])
    wait_until(lambda: int(text(p, "#t-events").replace(",", "")) >= before + 7)
    shot = tmp_path / "dashboard.png"
    p.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("BRIDGE_DASHBOARD_SCREENSHOT"):
        shutil.copy(shot, os.environ["BRIDGE_DASHBOARD_SCREENSHOT"])
    time.sleep(1.2)  # two more polls: later refreshes must be clean too
    assert problems == []


def test_dashboard_range_switch_and_api_outage(dashboard, page) -> None:
    p, problems = page
    p.goto(login_url(dashboard.url), wait_until="load")
    p.wait_for_selector("body[data-loaded='1']", timeout=15_000)
    p.click("#range button[data-range='24h']")
    wait_until(lambda: p.locator("#chart svg g.bar").count() >= 96)
    assert p.locator("#range button.on").inner_text() == "24 h"
    assert problems == []
    # the API goes away: the page says so and keeps the last figures; it recovers by itself
    dashboard.stop()
    p.wait_for_selector("#banner:not([hidden])", timeout=10_000)
    assert "unreachable" in text(p, "#banner") and text(p, "#t-connections") == "41"
    assert "unreachable" in text(p, "#conn")
    dashboard.start()
    p.wait_for_selector("#banner[hidden]", state="attached", timeout=40_000)
    assert "polling" in text(p, "#conn")


def test_dashboard_live_events_over_a_real_gateway(
    spawn, api_env, dashboard, page, redis_url, namespace
) -> None:
    """With BRIDGE_DASHBOARD_GATEWAY_URL the page imports the gateway's client.js and its
    BridgeClient subscribes over the gateway's /ws."""
    import asyncio

    from bridge_common.channels import Channels
    from bridge_common.events import event_fragment
    from bridge_common.redis import EventPublisher, create_redis
    from bridge_common.settings import BridgeSettings

    gw = spawn("gateway", {**api_env, "BRIDGE_AUTH": "disabled"})
    live_api = spawn("metrics_api", {**api_env, "BRIDGE_DASHBOARD_GATEWAY_URL": gw.url})
    r = redis.Redis.from_url(redis_url)
    r.sadd(Channels(namespace).topics, "audit_logs", "alerts")
    r.close()
    p, problems = page
    requested: list[str] = []
    sockets: list[str] = []
    p.on("request", lambda req: requested.append(req.url))
    p.on("websocket", lambda ws: sockets.append(ws.url))
    p.goto(login_url(live_api.url), wait_until="load")
    p.wait_for_selector("body[data-loaded='1']", timeout=15_000)
    wait_until(lambda: "gateway" in text(p, "#conn"))
    # the page loaded the gateway's browser client, and that client opened the one socket
    assert gw.url + "/client.js" in requested
    # (with a short-lived token from /api/v1/gateway-token, though this gateway needs none)
    assert len(sockets) == 1
    assert sockets[0].startswith(gw.url.replace("http://", "ws://") + "/ws?token=ey")
    csp = ops_get(live_api.url + "/").headers["content-security-policy"]
    assert f"script-src 'self' {gw.url};" in csp
    assert f"connect-src 'self' {gw.url} {gw.url.replace('http://', 'ws://')};" in csp

    async def publish(n: int) -> None:
        client = create_redis(BridgeSettings(BRIDGE_REDIS_URL=redis_url))
        pub = EventPublisher(client, Channels(namespace))
        row = {"id": n, "action": "intent.approved", "severity": "info", "actor": "zoe"}
        await pub.publish("audit_logs", [(None, event_fragment("insert", str(n), row, "t"))])
        await client.aclose()

    # publish until the subscription is live and the event reaches the page's feed
    deadline = time.monotonic() + 20
    n = 0
    while p.locator("#feed li").count() == 0:
        assert time.monotonic() < deadline, "no live event reached the page"
        n += 1
        # Playwright's sync API owns this thread's event loop: publish from another thread
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, publish(n)).result(timeout=10)
        time.sleep(0.3)
    assert not p.locator("#feed").is_hidden()
    assert "intent.approved" in text(p, "#feed") and "zoe" in text(p, "#feed")
    # alerts come through the same client and socket
    feed_before = p.locator("#feed li").count()

    async def publish_alert() -> None:
        client = create_redis(BridgeSettings(BRIDGE_REDIS_URL=redis_url))
        pub = EventPublisher(client, Channels(namespace))
        row = {"rule": "etl_lag_high", "state": "firing", "severity": "warning", "summary": "x"}
        await pub.publish("alerts", [(None, event_fragment("insert", "a1", row, "t"))])
        await client.aclose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, publish_alert()).result(timeout=10)
    wait_until(lambda: p.locator("#feed li").count() > feed_before)
    assert "etl_lag_high firing" in text(p, "#feed li:first-child")
    assert len(sockets) == 1
    if os.environ.get("BRIDGE_DASHBOARD_SCREENSHOT"):
        p.screenshot(path=os.environ["BRIDGE_DASHBOARD_SCREENSHOT"] + ".live.png", full_page=True)
    assert problems == []


def test_dashboard_polls_when_the_gateway_client_cannot_be_loaded(
    spawn, api_env, dashboard, page, db
) -> None:
    """A gateway URL whose client.js cannot be imported (nothing listens there): the page
    says so at info level, keeps polling, and its own code logs no error or warning."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    api = spawn("metrics_api", {**api_env, "BRIDGE_DASHBOARD_GATEWAY_URL": dead})
    p, problems = page
    infos: list[str] = []
    p.on("console", lambda m: infos.append(m.text) if m.type == "info" else None)
    p.goto(login_url(api.url), wait_until="load")
    p.wait_for_selector("body[data-loaded='1']", timeout=15_000)
    wait_until(lambda: any("gateway client not loaded" in m for m in infos))
    before = int(text(p, "#t-events").replace(",", ""))
    add_audit(db, [AuditRow(datetime.now(UTC)) for _ in range(3)])
    wait_until(lambda: int(text(p, "#t-events").replace(",", "")) >= before + 3)
    assert "polling" in text(p, "#conn")
    assert p.locator("#feed").is_hidden()
    # the only problems are the browser's own reports of the failed client.js fetch
    assert problems, "the failed import was not even attempted"
    assert all("client.js" in m or "ERR_CONNECTION_REFUSED" in m for m in problems), problems


def _publish_audit(redis_url: str, namespace: str, n: int, actor: str) -> None:
    """One `audit_logs` event on the bus, from a thread of its own (Playwright's sync API
    owns this thread's event loop)."""
    import asyncio

    from bridge_common.channels import Channels
    from bridge_common.events import event_fragment
    from bridge_common.redis import EventPublisher, create_redis
    from bridge_common.settings import BridgeSettings

    async def go() -> None:
        client = create_redis(BridgeSettings(BRIDGE_REDIS_URL=redis_url))
        pub = EventPublisher(client, Channels(namespace))
        row = {"id": n, "action": "intent.approved", "severity": "info", "actor": actor}
        await pub.publish("audit_logs", [(None, event_fragment("insert", str(n), row, "t"))])
        await client.aclose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, go()).result(timeout=10)


def test_dashboard_logs_in_by_link_and_survives_gateway_token_refresh(
    spawn, api_env, dashboard, page, redis_url, namespace
) -> None:
    """Gateway with JWT auth; the page logs in by link, gets short-lived gateway tokens
    (10 s here) from /api/v1/gateway-token, and keeps receiving live events after the
    gateway closed its socket at the first token's expiry."""
    gw = spawn("gateway", {**api_env, "BRIDGE_AUTH": "jwt"})
    api = spawn(
        "metrics_api",
        {
            **api_env,
            "BRIDGE_DASHBOARD_GATEWAY_URL": gw.url,
            "BRIDGE_METRICS_GATEWAY_TOKEN_TTL": "10",
        },
    )
    r = redis.Redis.from_url(redis_url)
    r.sadd(Channels(namespace).topics, "audit_logs", "alerts")
    r.close()
    p, problems = page
    token_requests: list[str] = []
    sockets: list[str] = []
    p.on(
        "request",
        lambda req: token_requests.append(req.url) if "/api/v1/gateway-token" in req.url else None,
    )
    p.on("websocket", lambda ws: sockets.append(ws.url))

    # before logging in: the page says how to, and gives nothing away
    p.goto(api.url + "/", wait_until="load")
    assert "/login?token=" in p.content() and p.locator("#tiles").count() == 0
    expected = {f"HTTP 401: {api.url}/"}  # that page's status, and the console's note of it

    p.goto(login_url(api.url, sub="ops-alice"), wait_until="load")
    assert p.url == api.url + "/"
    p.wait_for_selector("body[data-loaded='1']", timeout=15_000)
    cookies = {c["name"]: c for c in p.context.cookies()}
    session = cookies["bridge_ops_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert "token=" not in p.url  # the link's token does not stay in the address bar
    wait_until(lambda: "gateway" in text(p, "#conn"))
    assert token_requests and all(u.startswith(api.url) for u in token_requests)
    assert len(sockets) == 1 and "token=" in sockets[0]

    def delivered(actor: str) -> bool:
        return actor in text(p, "#feed") if p.locator("#feed li").count() else False

    n = 0
    deadline = time.monotonic() + 20
    while not delivered("before-refresh"):
        assert time.monotonic() < deadline, "no live event reached the page"
        n += 1
        _publish_audit(redis_url, namespace, n, "before-refresh")
        time.sleep(0.3)

    # the first token (10 s) runs out: the gateway closes the socket, the client asks the
    # page's token provider again and reconnects with a fresh token
    def refreshed() -> bool:
        p.title()  # the sync API delivers page events only while it is called
        return len(sockets) >= 2 and len(token_requests) >= 2

    wait_until(refreshed, timeout=40)
    wait_until(lambda: "gateway" in text(p, "#conn"), timeout=20)
    first, second = sockets[0], sockets[-1]
    assert first != second  # a different token on the new socket
    deadline = time.monotonic() + 20
    while not delivered("after-refresh"):
        assert time.monotonic() < deadline, "no live event after the token refresh"
        n += 1
        _publish_audit(redis_url, namespace, n, "after-refresh")
        time.sleep(0.3)
    unexpected = [m for m in problems if m not in expected and "status of 401" not in m]
    assert unexpected == [], unexpected

    # log out: the cookie goes, the page shows how to log in again
    p.click("#logout")
    p.wait_for_selector("body.login", timeout=10_000)
    assert "bridge_ops_session" not in {c["name"] for c in p.context.cookies()}
