"""What the alerter adds between a snapshot and a webhook, beside sending directly.

`just bench alerter [--rules=N] [--trials=K] [--no-write]`. One run, on a scratch Redis
namespace, with a real `bridge-alerter` subprocess and a local HTTP receiver (200 OK):

1. fan-out: N rules (default 200) start firing on one snapshot, each notifying one signed
   webhook channel; time from publishing the snapshot to the N-th webhook received, then
   the same for the N `resolved` notices. Reference, measured in the same run: the same N
   signed POSTs sent one after another by one httpx client (the floor of one channel,
   which the alerter also sends sequentially).
2. latency: K times, a snapshot that makes one rule fire (or resolve) → its webhook
   arriving (p50/p95/max); includes one XREAD wake-up, the fenced Redis write and the POST.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from bridge_common.channels import Channels
from bridge_common.events import AlertNotice, MetricsSnapshot, dumps
from bridge_common.redis import create_redis
from bridge_common.settings import BridgeSettings
from bridge_common.snapshots import publish_snapshot

from bench.report import write_section
from tests.support.infra import delete_namespace
from tests.support.processes import ServiceProcess

REDIS_URL = os.environ.get("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class _Receiver:
    """Counts POSTs per path and remembers when each arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, list[float]] = {}
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one small response: no 40 ms delayed-ACK stall

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.cond:
                    outer.arrivals.setdefault(self.path, []).append(time.perf_counter())
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_count(self, path: str, n: int, timeout: float = 120.0) -> float:
        """perf_counter of the n-th arrival on `path`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.arrivals.get(path, [])) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{path}: {len(self.arrivals.get(path, []))}/{n}")
                self.cond.wait(left)
            return self.arrivals[path][n - 1]


def _rules(url: str, n: int) -> str:
    out = [
        "channels:",
        f"  fan: {{type: webhook, url: '{url}/fan', secret: bench}}",
        f"  one: {{type: webhook, url: '{url}/one', secret: bench}}",
        "rules:",
    ]
    for i in range(n):
        out += [
            f"  - name: r{i}",
            "    metric: fan",
            "    op: '>'",
            f"    threshold: {i}",
            "    severity: warning",
            "    summary: 'r {{ value }}'",
            "    notify: [fan]",
        ]
    out += [
        "  - name: single",
        "    metric: one",
        "    op: '>'",
        "    threshold: 0",
        "    severity: critical",
        "    summary: 'one {{ value }}'",
        "    notify: [one]",
    ]
    return "\n".join(out) + "\n"


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def _direct_reference(url: str, n: int) -> float:
    """Seconds for n signed AlertNotice POSTs, one after another, one client."""
    import hashlib
    import hmac

    notice = AlertNotice(
        rule="r",
        state="firing",
        severity="warning",
        value=1.0,
        threshold=0.0,
        summary="r 1",
        started_at="",
        fingerprint="x",
    )
    async with httpx.AsyncClient(timeout=10) as http:
        t0 = time.perf_counter()
        for i in range(n):
            body = dumps(notice)
            sig = "sha256=" + hmac.new(b"bench", body, hashlib.sha256).hexdigest()
            r = await http.post(
                f"{url}/ref",
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Bridge-Signature": sig,
                    "X-Bridge-Delivery": str(i),
                },
            )
            r.raise_for_status()
        return time.perf_counter() - t0


async def run(args: argparse.Namespace) -> str:
    ns = f"bench_alerter_{uuid.uuid4().hex[:8]}"
    rx = _Receiver()
    tmp = Path(tempfile.mkdtemp(prefix="bench-alerter-"))
    rules = tmp / "alerts.yaml"
    rules.write_text(_rules(rx.url, args.rules))
    env = {
        "BRIDGE_REDIS_URL": REDIS_URL,
        "BRIDGE_NAMESPACE": ns,
        "BRIDGE_ALERT_RULES": str(rules),
        "BRIDGE_ALERTER_RESOLVE_GRACE": "0",
        "BRIDGE_LOG_LEVEL": "warning",
        "BRIDGE_ALERTER_LEASE_TTL": "2",
    }
    client = create_redis(BridgeSettings(BRIDGE_REDIS_URL=REDIS_URL))
    channels = Channels(ns)
    proc = ServiceProcess("alerter", env, tmp)
    metrics: dict[str, float | None] = {"fan": 0.0, "one": 0.0}

    async def publish(**changes: float) -> float:
        metrics.update(changes)
        t = time.perf_counter()
        await publish_snapshot(
            client, channels, MetricsSnapshot(ts=time.time(), metrics=dict(metrics))
        )
        return t

    try:
        proc.start()
        await publish()
        await asyncio.sleep(3.0)  # leader elected, baseline evaluated
        n = args.rules
        t0 = await publish(fan=1e9)
        fire_s = await asyncio.to_thread(rx.wait_count, "/fan", n) - t0
        t0 = await publish(fan=-1.0)
        resolve_s = await asyncio.to_thread(rx.wait_count, "/fan", 2 * n) - t0
        ref_s = await _direct_reference(rx.url, n)

        lat: list[float] = []
        for k in range(args.trials):
            t0 = await publish(one=1.0 if k % 2 == 0 else 0.0)
            lat.append(await asyncio.to_thread(rx.wait_count, "/one", k + 1) - t0)
            await asyncio.sleep(0.05)
    finally:
        proc.stop()
        await client.aclose()
        delete_namespace(REDIS_URL, ns)
        rx.server.shutdown()

    ms = [x * 1000 for x in lat]
    return "\n".join(
        [
            "## Alerter",
            "",
            f"`just bench alerter --rules={args.rules} --trials={args.trials}` — one "
            "`bridge-alerter` process, local Redis, a local HTTP receiver answering 200; the "
            "machine is shared with other test runs, so treat the figures as indicative.",
            "",
            "| what | time | rate |",
            "|---|---|---|",
            f"| {n} rules fire on one snapshot → {n}th webhook received | {fire_s:.3f} s | "
            f"{n / fire_s:.0f} notifications/s |",
            f"| {n} rules resolve on one snapshot → {n}th webhook received | {resolve_s:.3f} s | "
            f"{n / resolve_s:.0f} notifications/s |",
            f"| reference: {n} signed POSTs sent directly, one after another | {ref_s:.3f} s | "
            f"{n / ref_s:.0f} POSTs/s |",
            "",
            f"Snapshot → webhook latency of one rule over {len(ms)} fire/resolve transitions: "
            f"p50 {statistics.median(ms):.1f} ms, p95 {_pct(ms, 95):.1f} ms, max {max(ms):.1f} ms.",
            "",
            "Each notification costs the alerter one fenced Lua write (state + outbox), one "
            "POST and one acknowledgement (HDEL), plus its `alerts` topic event; the difference "
            "to the reference is that bookkeeping — what makes delivery survive a `kill -9`.",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench alerter")
    parser.add_argument("--rules", type=int, default=200, help="rules firing at once")
    parser.add_argument("--trials", type=int, default=40, help="latency samples")
    parser.add_argument("--no-write", action="store_true", help="print, do not record")
    args = parser.parse_args(argv)
    body = asyncio.run(run(args))
    print(body)
    if not args.no_write:
        write_section("alerter", body)
    return 0
