"""Python client SDK: replay throughput against a bare websockets reference, and how long
a subscription takes to resume after the gateway is killed (-9) and restarted.

`just bench client [--events=50000] [--restarts=3]`

One run, on a scratch Redis namespace, with one `bridge-gateway` (auth disabled):

1. throughput: N events (≈300-byte rows) are appended to a topic; then a subscription
   with `since="0-0"` drains them (replay, then live) — through `bridge_client`
   (typed `Event`s, dedupe, bounded queue) and through a bare `websockets` connection
   sending the same subscribe frame and decoding each frame with `json.loads`
   (the reference). Events/s for each, in the same run.
2. resume: a steady stream (200 events/s) is consumed while the gateway is killed and
   restarted R times (each after a healthy period, so the backoff starts from attempt 0);
   for each restart, gateway ready → first event delivered after it (default backoff:
   base 0.5 s, cap 10 s, full jitter), and the sequence is checked for gaps and duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aredis
from bridge_client import BridgeClient
from bridge_common.channels import Channels
from bridge_common.events import event_fragment
from bridge_common.redis import EventPublisher
from websockets.asyncio.client import connect

from bench.report import write_section
from tests.support.infra import delete_namespace
from tests.support.processes import ServiceProcess

REDIS_URL = os.environ.get("BRIDGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PAD = "x" * 200


def _frag(n: int) -> bytes:
    row = {"n": n, "status": "pending", "title": f"intent {n}", "pad": PAD}
    return event_fragment("insert", str(n), row, datetime.now(UTC).isoformat())


async def _fill(pub: EventPublisher, topic: str, count: int) -> None:
    batch = 500
    for start in range(1, count + 1, batch):
        items = [(None, _frag(n)) for n in range(start, min(count, start + batch - 1) + 1)]
        await pub.publish(topic, items)


async def _drain_sdk(url: str, topic: str, count: int) -> float:
    async with BridgeClient(url) as client:
        t0 = time.perf_counter()
        seen = 0
        async for _event in client.subscribe(topic, since="0-0"):
            seen += 1
            if seen == count:
                break
        return time.perf_counter() - t0


async def _drain_reference(url: str, topic: str, count: int) -> float:
    ws_url = url.replace("http://", "ws://") + "/ws"
    async with connect(ws_url, max_size=16 * 1024 * 1024) as ws:
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "since": "0-0"}))
        seen = 0
        async for frame in ws:
            if json.loads(frame).get("type") == "event":
                seen += 1
                if seen == count:
                    break
        return time.perf_counter() - t0


async def _resume(
    gw: ServiceProcess, pub: EventPublisher, topic: str, restarts: int
) -> dict[str, object]:
    stop = asyncio.Event()
    published = 0

    async def produce() -> None:
        nonlocal published
        while not stop.is_set():
            published += 1
            while True:
                try:
                    await pub.publish(topic, [(published, _frag(published))])
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)

    seen: list[int] = []
    arrivals: list[float] = []
    gaps: list[float] = []
    downtimes: list[float] = []
    await pub.client.sadd(pub.channels.topics, topic)  # known before its first event
    async with BridgeClient(gw.url) as client:
        sub = client.subscribe(topic)
        await sub.wait_live()

        async def consume() -> None:
            async for event in sub:
                seen.append(int(event.data["n"]))
                arrivals.append(time.monotonic())

        producer = asyncio.create_task(produce())
        consumer = asyncio.create_task(consume())
        healthy = client.options.backoff.healthy_after
        for _ in range(restarts):
            # a healthy connection first, so each restart starts from attempt 0
            await asyncio.sleep(healthy + 0.5)
            killed = time.monotonic()
            await asyncio.to_thread(gw.stop, signal.SIGKILL)
            await asyncio.to_thread(gw.start)
            ready = time.monotonic()
            downtimes.append(ready - killed)
            before = len(seen)
            while len(seen) == before or arrivals[-1] < ready:
                await asyncio.sleep(0.005)
            first_after = next(t for t in arrivals[before:] if t >= ready)
            gaps.append(first_after - ready)
        stop.set()
        await producer
        deadline = time.monotonic() + 30
        while len(seen) < published and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        consumer.cancel()
    first = seen[0] if seen else 1
    expected = list(range(first, published + 1))
    return {
        "gaps": gaps,
        "down": downtimes,
        "exact": seen == expected,
        "events": len(seen),
        "connections": client.connections,
    }


async def run(events: int, restarts: int) -> str:
    ns = f"bench_client_{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    env = {
        "BRIDGE_REDIS_URL": REDIS_URL,
        "BRIDGE_NAMESPACE": ns,
        "BRIDGE_AUTH": "disabled",
        "BRIDGE_LOG_LEVEL": "warning",
    }
    gw = ServiceProcess("gateway", env, work).start()
    r = aredis.Redis.from_url(REDIS_URL)
    pub = EventPublisher(r, Channels(ns))
    try:
        await _fill(pub, "bench_replay", events)
        ref = await _drain_reference(gw.url, "bench_replay", events)
        sdk = await _drain_sdk(gw.url, "bench_replay", events)
        ref2 = await _drain_reference(gw.url, "bench_replay", events)
        sdk2 = await _drain_sdk(gw.url, "bench_replay", events)
        res = await _resume(gw, pub, "bench_resume", restarts)
    finally:
        gw.stop()
        await r.aclose()
        delete_namespace(REDIS_URL, ns)
    ref_rate = events / min(ref, ref2)
    sdk_rate = events / min(sdk, sdk2)
    gaps, down = res["gaps"], res["down"]
    assert isinstance(gaps, list) and isinstance(down, list)
    return f"""## Python client SDK (`just bench client --events={events} --restarts={restarts}`)

Replay of {events} events (≈300-byte rows) through one subscription, best of two runs each:

| client | events/s |
|---|---|
| bare `websockets` + `json.loads` (reference) | {ref_rate:,.0f} |
| `bridge_client` (typed `Event`, dedupe, bounded queue) | {sdk_rate:,.0f} \
({sdk_rate / ref_rate:.0%} of the reference) |

Resume after `kill -9` of the gateway, {restarts} times (each after a healthy connection),
while 200 events/s stream in (default backoff: base 0.5 s, cap 10 s, full jitter; the
gateway was down {", ".join(f"{d:.1f}" for d in down)} s, so several attempts failed first): \
gateway ready →
first event after it: {", ".join(f"{g * 1000:.0f}" for g in gaps)} ms, \
mean {statistics.mean(gaps) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms;
{res["events"]} events received over {res["connections"]} connections, sequence
{"exactly once (no gap, no duplicate)" if res["exact"] else "WRONG: gap or duplicate"}.
The machine is shared with other engineers' test runs; both sides were measured in the
same run.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench client")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args(argv)
    body = asyncio.run(run(args.events, args.restarts))
    print(body)
    write_section("client", body)
    return 0
