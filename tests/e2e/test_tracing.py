"""Tracing and delivery lag (issue #18) through the real notifier, gateway and ETL worker.

A transaction that sets `bridge.traceparent` yields one connected trace: the notifier's
`relay.publish`, the gateway's `gateway.fanout` and the ETL's `etl.load` spans, received
by a local OTLP/HTTP receiver, are all children of the application's span, and the client
frames (WebSocket, the Python SDK, a resume from the history) carry the traceparent. A
transaction without one gives events without the field and spans rooted per hop. An
exporter that is down leaves the services unaffected. Each hop's lag histogram moves
when a delay is injected at that hop (a transaction held open, a paused gateway, a
paused ETL worker).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from typing import Any

import httpx
import psycopg
import pytest
import redis
import websockets
from bridge_common.channels import Channels
from bridge_common.events import decode_heartbeat

from tests.support.history import wait_history
from tests.support.infra import free_port
from tests.support.otlp import OtlpReceiver, otel_env, otlp_receiver
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(120)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{PARENT}-01"
TOPIC = "audit_logs"


@pytest.fixture(scope="module")
def receiver() -> Any:
    with otlp_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def watched(migrated_dsn: str) -> str:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("SELECT bridge.watch('audit_logs'::regclass)")
    return migrated_dsn


def _env(bridge_env: dict[str, str], endpoint: str) -> dict[str, str]:
    return {
        **bridge_env,
        **otel_env(endpoint),
        "BRIDGE_NOTIFIER_TOPICS_REFRESH": "0.5",
        "BRIDGE_ETL_MODE": "event",
        "BRIDGE_ETL_CLAIM_IDLE": "1",
        "BRIDGE_SHUTDOWN_TIMEOUT": "5",
    }


async def _write(dsn: str, actor: str, traceparent: str | None, hold: float = 0.0) -> None:
    """One audit row in one transaction, with `bridge.traceparent` set when given; `hold`
    keeps the transaction open after the insert (delay before the commit)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            if traceparent is not None:
                await conn.execute(
                    "SELECT set_config('bridge.traceparent', %s, true)", (traceparent,)
                )
            await conn.execute(
                "INSERT INTO audit_logs (actor, action, details) VALUES (%s, 'traced', '{}')",
                (actor,),
            )
            if hold:
                await asyncio.sleep(hold)  # the injected delay itself, not a wait


async def until(cond: Any, timeout: float, what: str) -> None:
    """Poll the (blocking) `cond()` off the loop until true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(cond):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _samples(proc: ServiceProcess, name: str) -> dict[str, float]:
    """`name`'s samples on the process's /metrics, keyed by their label text."""
    text = httpx.get(proc.url + "/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def _slower_than(proc: ServiceProcess, histogram: str, seconds: float) -> float:
    """How many observations of `histogram` on the topic exceeded `seconds`."""
    s = _samples(proc, histogram + "_bucket")
    total = s.get(f'{{le="+Inf",topic="{TOPIC}"}}', 0.0)
    below = s.get(f'{{le="{seconds}",topic="{TOPIC}"}}', 0.0)
    return total - below


def _count(proc: ServiceProcess, histogram: str) -> float:
    return _samples(proc, histogram + "_count").get(f'{{topic="{TOPIC}"}}', 0.0)


async def _ws_events(gw: ServiceProcess, count: int, since: str | None = None) -> list[dict]:
    url = gw.url.replace("http://", "ws://") + "/ws"
    sub: dict[str, Any] = {"type": "subscribe", "topic": TOPIC}
    if since is not None:
        sub["since"] = since
    got: list[dict] = []
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps(sub))
        async with asyncio.timeout(30):
            while len(got) < count:
                msg = json.loads(await ws.recv())
                assert msg["type"] != "error", msg
                if msg["type"] == "event":
                    got.append(msg)
    return got


def _child_of_app(service: str, name: str):  # type: ignore[no-untyped-def]
    return lambda s: (
        s.service == service
        and s.name == name
        and s.trace_id == TRACE
        and s.parent_span_id == PARENT
    )


async def test_one_trace_from_the_transaction_to_the_client_and_the_etl_store(
    spawn, bridge_env, watched, receiver: OtlpReceiver
) -> None:
    env = _env(bridge_env, receiver.url)
    spawn("notifier", env)
    gw = spawn("gateway", env)
    spawn("etl", env)
    await until(lambda: _topic_known(bridge_env), 20, "the topic registered")

    from bridge_client import BridgeClient

    async with BridgeClient(gw.url) as client:
        sdk_sub = client.subscribe(TOPIC)
        ws = asyncio.create_task(_ws_events(gw, 2))
        await until(lambda: _subscribers(gw) >= 2, 20, "two live subscribers")
        await _write(watched, "traced-1", TP)
        await _write(watched, "plain-1", None)
        frames = await ws
        async with asyncio.timeout(30):
            sdk = [await anext(sdk_sub), await anext(sdk_sub)]

    # the frames: the traceparent only on the traced row's event
    traced, plain = frames
    assert traced["data"]["actor"] == "traced-1" and traced["traceparent"] == TP
    assert plain["data"]["actor"] == "plain-1" and "traceparent" not in plain
    assert [e.traceparent for e in sdk] == [TP, None]
    # the history keeps it: a resume from the PostgreSQL history shows the same bytes
    ids = await wait_history(watched, TOPIC, 2)
    with psycopg.connect(watched) as conn:
        stored = conn.execute(
            "SELECT traceparent FROM bridge.history WHERE topic = %s ORDER BY ms, n", (TOPIC,)
        ).fetchall()
    assert [r[0] for r in stored][-2:] == [TP, None]
    assert ids[-2] == traced["id"]

    # one trace: each hop's span is a child of the application's span
    for service, name in (
        ("bridge-notifier", "relay.publish"),
        ("bridge-gateway", "gateway.fanout"),
        ("bridge-etl", "etl.load"),
    ):
        found = await asyncio.to_thread(receiver.wait_for, _child_of_app(service, name), 30)
        assert found, (service, name)
    fanout = receiver.find(_child_of_app("bridge-gateway", "gateway.fanout"))
    assert any(s.attributes.get("bridge.event_id") == traced["id"] for s in fanout)
    # the untraced event's fan-out is a root span of its own trace
    roots = await asyncio.to_thread(
        receiver.wait_for,
        lambda s: s.name == "gateway.fanout" and s.attributes.get("bridge.event_id") == plain["id"],
        30,
    )
    assert all(s.parent_span_id == "" and s.trace_id != TRACE for s in roots)


async def test_a_resume_from_the_history_carries_the_traceparent(
    spawn, bridge_env, watched, receiver: OtlpReceiver
) -> None:
    env = _env(bridge_env, receiver.url)
    spawn("notifier", env)
    gw = spawn("gateway", env)
    with psycopg.connect(watched) as conn:
        row = conn.execute("SELECT count(*) FROM bridge.history WHERE topic = %s", (TOPIC,))
        had = int(row.fetchone()[0])  # type: ignore[index]
    await _write(watched, "traced-2", TP)
    ids = await wait_history(watched, TOPIC, had + 1)
    with psycopg.connect(watched) as conn:
        row = conn.execute(
            "SELECT ms, n FROM bridge.history WHERE topic = %s ORDER BY ms DESC, n DESC "
            "OFFSET 1 LIMIT 1",
            (TOPIC,),
        ).fetchone()
    since = f"{row[0]}-{row[1]}" if row else "0-0"
    (event,) = await _ws_events(gw, 1, since=since)
    assert event["id"] == ids[-1] and event["traceparent"] == TP
    spans = await asyncio.to_thread(
        receiver.wait_for, lambda s: s.service == "bridge-gateway" and s.name == "gateway.replay"
    )
    assert spans[0].attributes["bridge.topic"] == TOPIC


async def test_an_exporter_that_is_down_leaves_the_services_unaffected(
    spawn, bridge_env, watched
) -> None:
    env = _env(bridge_env, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    notifier = spawn("notifier", env)
    gw = spawn("gateway", env)
    await until(lambda: _topic_known(bridge_env), 20, "the topic registered")
    ws = asyncio.create_task(_ws_events(gw, 3))
    await until(lambda: _subscribers(gw) >= 1, 20, "a live subscriber")
    for i in range(3):
        await _write(watched, f"down-{i}", TP)
    frames = await ws
    assert [f["data"]["actor"] for f in frames] == ["down-0", "down-1", "down-2"]
    assert all(f["traceparent"] == TP for f in frames)
    # and they stop cleanly (the export that cannot leave is abandoned)
    assert await asyncio.to_thread(gw.stop) == 0
    assert await asyncio.to_thread(notifier.stop) == 0


async def test_each_hops_lag_histogram_moves_with_an_injected_delay(
    spawn, bridge_env, watched
) -> None:
    notifier = spawn("notifier", bridge_env)  # tracing off: the histograms do not need it
    gw = spawn("gateway", {**bridge_env, "BRIDGE_NOTIFIER_TOPICS_REFRESH": "0.5"})
    etl = spawn("etl", {**bridge_env, "BRIDGE_ETL_MODE": "event"})
    await until(lambda: _topic_known(bridge_env), 20, "the topic registered")

    # commit → publish: the row's time is its insert (no commit timestamps here, else
    # its commit); a transaction held open after the insert delays its publish
    held = 1.0
    before = _slower_than(notifier, "bridge_notifier_commit_lag_seconds", 0.5)
    await _write(watched, "held", None, hold=held)
    await until(
        lambda: _slower_than(notifier, "bridge_notifier_commit_lag_seconds", 0.5) > before,
        20,
        "a commit lag above 0.5 s",
    )

    # publish → gateway send and publish → ETL store: the consumer paused while the
    # event is published
    ws = asyncio.create_task(_ws_events(gw, 1))
    await until(lambda: _subscribers(gw) >= 1, 20, "a live subscriber")
    g_before = _slower_than(gw, "bridge_gateway_delivery_lag_seconds", 0.5)
    e_before = _slower_than(etl, "bridge_etl_store_lag_seconds", 0.5)
    published = _count(notifier, "bridge_notifier_commit_lag_seconds")
    gw.proc.send_signal(signal.SIGSTOP)
    etl.proc.send_signal(signal.SIGSTOP)
    try:
        await _write(watched, "paused", None)
        await until(
            lambda: _count(notifier, "bridge_notifier_commit_lag_seconds") > published,
            20,
            "the event published",
        )
        await asyncio.sleep(held)  # the injected pause of both consumers
    finally:
        gw.proc.send_signal(signal.SIGCONT)
        etl.proc.send_signal(signal.SIGCONT)
    (frame,) = await ws
    assert frame["data"]["actor"] == "paused"
    await until(
        lambda: _slower_than(gw, "bridge_gateway_delivery_lag_seconds", 0.5) > g_before,
        20,
        "a gateway delivery lag above 0.5 s",
    )
    await until(
        lambda: _slower_than(etl, "bridge_etl_store_lag_seconds", 0.5) > e_before,
        20,
        "an ETL store lag above 0.5 s",
    )

    # and the heartbeats carry the recent quantiles the metrics snapshot reads
    def quantiles(service: str, key: str) -> dict[str, Any]:
        for status in _statuses(bridge_env, service):
            got = status.get(key, {}).get(TOPIC)
            if got and got["p99"] is not None and got["p99"] > 0.5:
                return dict(got)
        return {}

    for service, key in (
        ("gateway", "delivery_lag"),
        ("notifier", "commit_lag"),
        ("etl", "store_lag"),
    ):
        await until(lambda s=service, k=key: bool(quantiles(s, k)), 20, f"{service} {key}")
        q = quantiles(service, key)
        assert q["p50"] is not None and q["p50"] <= q["p99"] and q["count"] >= 1


def _subscribers(gw: ServiceProcess) -> float:
    return _samples(gw, "bridge_gateway_subscriptions").get("", 0.0)


def _statuses(env: dict[str, str], service: str) -> list[dict[str, Any]]:
    """The heartbeat status of every instance of `service` (the metrics API's source)."""
    r = redis.Redis.from_url(env["BRIDGE_REDIS_URL"])
    try:
        raw = r.hgetall(Channels(env["BRIDGE_NAMESPACE"]).services)
    finally:
        r.close()
    return [
        decode_heartbeat(v).status for k, v in raw.items() if k.decode().startswith(service + "/")
    ]


def _topic_known(env: dict[str, str]) -> bool:
    r = redis.Redis.from_url(env["BRIDGE_REDIS_URL"])
    try:
        return bool(r.sismember(Channels(env["BRIDGE_NAMESPACE"]).topics, TOPIC))
    finally:
        r.close()
