"""End to end through a real `bridge-alerter` process: snapshots in Redis → state machine →
signed webhook + Slack message on a local HTTP server, state in Redis, events on `alerts`."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime
from pathlib import Path

import httpx
from bridge_common.channels import Channels
from bridge_common.events import assemble_event, decode_alert, decode_event

from .conftest import rules_yaml, wait_until

RULE = """\
  - name: error_rate_high
    metric: audit.error_rate_5m
    op: ">"
    threshold: 0.05
    for: 500ms
    severity: critical
    summary: "Audit error rate {{ value }} above {{ threshold }}"
    notify: [slack, hook]
    labels: {team: ops}
"""
CONTRACT_KEYS = {
    "rule",
    "state",
    "severity",
    "value",
    "threshold",
    "summary",
    "started_at",
    "fingerprint",
}


def test_pending_firing_resolved_with_for_signed_webhook_and_slack(
    spawn, alerter_env, receiver, feed, r, ns, tmp_path: Path
) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    feed.set({"audit.error_rate_5m": 0.01})
    proc = spawn("alerter", alerter_env)
    ch = Channels(ns)

    # breach: pending first, firing only once it held for 500ms
    wait_until(lambda: b'"evaluator.took_over"' in proc.logs().encode(), what="leader")
    breach_at = time.time()
    feed.set({"audit.error_rate_5m": 0.2})
    pending = wait_until(
        lambda: [v for v in r.hvals(ch.alert_state) if b'"pending"' in v], what="pending"
    )
    assert pending and not receiver.requests
    [hook] = receiver.wait(lambda: receiver.delivered("/hook"), what="firing webhook")
    fired_at = hook.at
    assert fired_at - breach_at >= 0.5  # `for: 500ms` held before firing

    # the webhook body is exactly the contract's, signed with the channel's secret
    body = hook.json()
    assert set(body) == CONTRACT_KEYS
    assert body["state"] == "firing" and body["rule"] == "error_rate_high"
    assert body["severity"] == "critical" and body["threshold"] == 0.05
    assert body["value"] == 0.2 and body["summary"] == "Audit error rate 0.2 above 0.05"
    expected = hmac.new(b"s3cret", hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["x-bridge-signature"] == f"sha256={expected}"
    assert hook.headers["content-type"] == "application/json"

    # Slack gets text + blocks
    [slack] = receiver.wait(lambda: receiver.delivered("/slack"), what="slack")
    msg = slack.json()
    assert "error_rate_high" in msg["text"] and "FIRING" in msg["text"]
    assert msg["blocks"][0]["type"] == "section"

    # the state hash, as the metrics API reads it
    state = json.loads(r.hget(ch.alert_state, body["fingerprint"]))
    assert state["state"] == "firing" and state["rule"] == "error_rate_high"
    assert state["started_at"] == body["started_at"] and state["last_notified_at"]
    assert state["labels"] == {"team": "ops"} and state["value"] == 0.2

    # back to normal: one resolved notification per channel
    feed.set({"audit.error_rate_5m": 0.0})
    hooks = receiver.wait(
        lambda: len(receiver.delivered("/hook")) >= 2 and receiver.delivered("/hook"),
        what="resolved",
    )
    resolved = hooks[1].json()
    assert resolved["state"] == "resolved" and resolved["fingerprint"] == body["fingerprint"]
    assert resolved["started_at"] == body["started_at"] and resolved["value"] == 0.0
    receiver.wait(lambda: len(receiver.delivered("/slack")) == 2, what="slack resolved")
    time.sleep(0.5)  # more snapshots: nothing more is sent
    assert len(receiver.at("/hook")) == 2 and len(receiver.at("/slack")) == 2
    assert json.loads(r.hget(ch.alert_state, body["fingerprint"]))["state"] == "resolved"

    # state changes went to the `alerts` topic for the gateway, each exactly once
    events = [
        decode_event(assemble_event("alerts", entry_id, fields[b"f"]))
        for entry_id, fields in r.xrange(ch.stream("alerts"))
    ]
    assert [e.data["state"] for e in events] == ["firing", "resolved"]
    assert [e.op for e in events] == ["insert", "update"]
    assert all(e.key == body["fingerprint"] for e in events)
    assert decode_alert(json.dumps(events[0].data)).summary == body["summary"]

    # nothing left undelivered; /metrics counts what happened
    assert r.hlen(ch.alert_outbox) == 0
    text = httpx.get(proc.url + "/metrics").text
    assert 'bridge_alerter_notifications_total{channel="hook",outcome="delivered"} 2.0' in text
    assert proc.stop() == 0


REPEAT = """\
  - name: backlog
    metric: notifier.outbox_backlog
    op: ">="
    threshold: 100
    severity: warning
    summary: "backlog {{ value }}"
    notify: [hook]
    repeat_interval: 700ms
"""


def test_repeat_interval_while_firing_and_missing_metric_keeps_state(
    spawn, alerter_env, receiver, feed, r, ns
) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, REPEAT))
    feed.set({"notifier.outbox_backlog": 500})
    proc = spawn("alerter", alerter_env)
    # each notification's time is recorded in the state (snapshot time, so exact)
    notified: list[str] = []
    deadline = time.monotonic() + 15
    while len(notified) < 3 and time.monotonic() < deadline:
        for raw in r.hvals(Channels(ns).alert_state):
            at = json.loads(raw)["last_notified_at"]
            if at and at not in notified:
                notified.append(at)
        time.sleep(0.02)
    times = [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in notified]
    assert len(times) == 3
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= 0.7 for g in gaps), gaps  # never before repeat_interval (700ms)
    hooks = receiver.wait(
        lambda: len(receiver.delivered("/hook")) >= 3 and receiver.delivered("/hook"),
        what="two repeats",
    )
    assert {h.json()["state"] for h in hooks} == {"firing"}
    assert len({h.json()["started_at"] for h in hooks}) == 1  # one incident
    assert len({h.headers["x-bridge-delivery"] for h in hooks}) == len(hooks)
    # the metric disappears (no data): the alert keeps its state, nothing resolves
    feed.set({})
    n = len(receiver.delivered("/hook"))
    time.sleep(0.6)
    states = [json.loads(v)["state"] for v in r.hvals(Channels(ns).alert_state)]
    assert states == ["firing"]
    assert all(h.json()["state"] == "firing" for h in receiver.delivered("/hook")[n:])
    assert proc.stop() == 0


FLAP = """\
  - name: flappy
    metric: gateway.connections
    op: ">"
    threshold: 10
    severity: warning
    summary: "{{ value }} connections"
    notify: [hook]
"""


def test_flapping_within_grace_is_one_incident(spawn, alerter_env, receiver, feed, ns, r) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, FLAP))
    env = {**alerter_env, "BRIDGE_ALERTER_RESOLVE_GRACE": "2.5"}
    feed.set({"gateway.connections": 20})
    proc = spawn("alerter", env)
    receiver.wait(lambda: receiver.delivered("/hook"), what="firing")
    for _ in range(4):  # bounce around the threshold faster than the grace window
        feed.set({"gateway.connections": 1})
        time.sleep(0.3)
        feed.set({"gateway.connections": 20})
        time.sleep(0.3)
    assert [h.json()["state"] for h in receiver.at("/hook")] == ["firing"]
    feed.set({"gateway.connections": 1})
    receiver.wait(lambda: len(receiver.delivered("/hook")) == 2, what="resolved after grace")
    states = [h.json()["state"] for h in receiver.delivered("/hook")]
    assert states == ["firing", "resolved"]
    assert proc.stop() == 0


def test_stale_snapshot_is_not_evaluated(spawn, alerter_env, receiver, r, ns, redis_url) -> None:
    import asyncio

    from bridge_common.events import MetricsSnapshot
    from bridge_common.redis import create_redis
    from bridge_common.settings import BridgeSettings
    from bridge_common.snapshots import publish_snapshot

    async def publish(ts: float, value: float) -> None:
        client = create_redis(BridgeSettings(BRIDGE_REDIS_URL=redis_url))
        snap = MetricsSnapshot(ts=ts, metrics={"gateway.connections": value})
        await publish_snapshot(client, Channels(ns), snap)
        await client.aclose()

    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, FLAP))
    asyncio.run(publish(time.time() - 3600, 99))  # the metrics API died an hour ago
    proc = spawn("alerter", alerter_env)
    wait_until(lambda: '"snapshot.stale"' in proc.logs(), what="stale snapshot skipped")
    assert r.hlen(Channels(ns).alert_state) == 0 and not receiver.requests
    # junk in the stream and in the outbox is skipped, never fatal
    r.xadd(Channels(ns).snapshot_stream, {"snapshot": b"{not json"})
    r.hset(Channels(ns).alert_outbox, "1:hook", b"junk")
    wait_until(lambda: '"snapshot.invalid"' in proc.logs(), what="junk snapshot skipped")
    wait_until(lambda: r.hlen(Channels(ns).alert_outbox) == 0, what="junk outbox entry dropped")
    assert proc.alive()
    asyncio.run(publish(time.time(), 99))  # fresh figures: evaluated
    [hook] = receiver.wait(lambda: receiver.delivered("/hook"), what="fires on fresh data")
    assert hook.json()["value"] == 99
    assert proc.stop() == 0
