"""The alert path across the whole suite, as real processes: audit logs committed in
PostgreSQL → ETL → metrics API snapshot → alerter rule → a signed webhook a receiver can verify
(as docs/runbook.md "Security" tells receivers to) and an event on the gateway's `alerts`
topic; then the rate falls and the same happens for `resolved`."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from websockets.asyncio.client import connect as ws_connect

from tests.support.processes import ServiceProcess
from tests.support.suite import make_token, suite_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECRET = "hook-secret-for-e2e"  # noqa: S105 - test-only


class Hooks:
    """A local webhook receiver that verifies signatures the way the runbook says."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes, bool]] = []
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sent = self.headers.get("X-Bridge-Signature", "")
                want = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(sent, want)
                hooks.received.append((dict(self.headers), raw, ok))
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def notices(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.received]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    h = Hooks()
    h.thread.start()
    yield h
    h.server.shutdown()
    h.server.server_close()


RULES = """\
channels:
  receiver: {{type: webhook, url: "{url}", secret: "${{BRIDGE_E2E_HOOK_SECRET}}"}}
rules:
  - name: e2e_error_rate
    metric: audit.error_rate_5m
    op: ">"
    threshold: 0.2
    for: 1s
    severity: critical
    summary: "error rate {{{{ value }}}} above {{{{ threshold }}}}"
    notify: [receiver]
"""


async def insert_audit(dsn: str, severity: str, n: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with conn.transaction():
            for i in range(n):
                await conn.execute(
                    "INSERT INTO audit_logs (actor, action, severity, details)"
                    " VALUES ('e2e', 'intent.failed', %s, %s)",
                    (severity, Jsonb({"i": i})),
                )


async def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_error_rate_alert_fires_and_resolves_end_to_end(
    migrated_dsn: str,
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    spawn: Callable[..., ServiceProcess],
    hooks: Hooks,
) -> None:
    env = {
        **suite_env(migrated_dsn, namespace, redis_url=redis_url),
        "BRIDGE_SNAPSHOT_INTERVAL": "0.5",
        "BRIDGE_ALERTER_RESOLVE_GRACE": "0",
        "BRIDGE_E2E_HOOK_SECRET": SECRET,
    }
    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES.format(url=hooks.url))
    spawn("notifier", env)
    spawn("etl", env, args=["--mode", "hybrid"])  # the audit metrics come from its table
    gateway = spawn("gateway", env)
    spawn("metrics_api", env)
    alerter = spawn("alerter", env, args=["--rules", str(rules)])

    token = make_token(["alerts"])
    url = gateway.url.replace("http://", "ws://") + f"/ws?token={token}"
    events: list[dict[str, Any]] = []
    async with ws_connect(url, open_timeout=5) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "alerts"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 10)).get("type") != "subscribed":
            pass

        async def read() -> None:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "event":
                    events.append(msg)

        reader = asyncio.create_task(read())
        try:
            await insert_audit(migrated_dsn, "error", 10)
            await insert_audit(migrated_dsn, "info", 5)
            await wait_for(
                lambda: any(n.get("state") == "firing" for n in hooks.notices()),
                45,
                "the firing webhook" + alerter.logs()[-2000:],
            )
            await wait_for(lambda: bool(events), 15, "the firing event on `alerts`")

            await insert_audit(migrated_dsn, "info", 100)
            await wait_for(
                lambda: any(n.get("state") == "resolved" for n in hooks.notices()),
                45,
                "the resolved webhook",
            )
            await wait_for(
                lambda: any(e["data"].get("state") == "resolved" for e in events),
                15,
                "the resolved event on `alerts`",
            )
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    assert all(ok for _, _, ok in hooks.received), "a webhook failed signature verification"
    firing = next(n for n in hooks.notices() if n["state"] == "firing")
    resolved = next(n for n in hooks.notices() if n["state"] == "resolved")
    for notice in (firing, resolved):
        assert set(notice) >= {
            "rule", "state", "severity", "value", "threshold", "summary", "started_at",
            "fingerprint",
        }  # fmt: skip
        assert notice["rule"] == "e2e_error_rate" and notice["severity"] == "critical"
        assert notice["threshold"] == 0.2
    assert firing["value"] > 0.2 and resolved["value"] <= 0.2
    assert firing["fingerprint"] == resolved["fingerprint"]
    assert "above 0.2" in firing["summary"]
    # the same alert on the gateway: keyed by fingerprint, firing then resolved
    keyed = [e for e in events if e["key"] == firing["fingerprint"]]
    assert [e["data"]["state"] for e in keyed][:1] == ["firing"]
    assert keyed[-1]["data"]["state"] == "resolved"
    headers = hooks.received[0][0]
    assert headers.get("X-Bridge-Delivery")
