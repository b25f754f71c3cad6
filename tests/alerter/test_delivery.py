"""Delivery through a real `bridge-alerter`: retries on 500 and on 429 with Retry-After,
each notification delivered once; a dead channel does not hold up a live one; Slack pacing."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from bridge_common.channels import Channels

from .conftest import rules_yaml, wait_until
from .receiver import Answer

RULE = """\
  - name: lag_high
    metric: etl.lag_seconds
    op: ">"
    threshold: 30
    severity: critical
    summary: "ETL lag {{ value }}s"
    notify: [{channels}]
"""


def _rules(receiver_url: str, channels: str, extra: str = "") -> str:
    text = rules_yaml(receiver_url, RULE.format(channels=channels))
    return text.replace("rules:\n", extra + "rules:\n") if extra else text


def test_500s_are_retried_and_delivered_once(spawn, alerter_env, receiver, feed, r, ns) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(_rules(receiver.url, "hook"))
    receiver.script("/hook", Answer(500), Answer(503), Answer(502))
    feed.set({"etl.lag_seconds": 90})
    proc = spawn("alerter", alerter_env)
    [ok] = receiver.wait(lambda: receiver.delivered("/hook"), what="delivery after 500s")
    attempts = receiver.at("/hook")
    assert [a.status for a in attempts] == [500, 503, 502, 200]
    # the same notification each time (same id, same signed body)
    assert len({a.headers["x-bridge-delivery"] for a in attempts}) == 1
    assert len({a.body for a in attempts}) == 1
    wait_until(lambda: '"delivery.sent"' in proc.logs(), what="ack")
    assert len(receiver.delivered("/hook")) == 1 and ok.json()["state"] == "firing"
    assert proc.stop() == 0
    assert len(receiver.at("/hook")) == 4


def test_429_retry_after_is_honoured(spawn, alerter_env, receiver, feed) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(_rules(receiver.url, "slack"))
    receiver.script("/slack", Answer(429, {"Retry-After": "1"}), Answer(429, {"Retry-After": "1"}))
    feed.set({"etl.lag_seconds": 90})
    proc = spawn("alerter", alerter_env)
    receiver.wait(lambda: receiver.delivered("/slack"), what="delivery after 429s")
    attempts = receiver.at("/slack")
    assert [a.status for a in attempts] == [429, 429, 200]
    # the backoff base is 50ms here: only Retry-After explains waiting a second
    assert attempts[1].at - attempts[0].at >= 0.95
    assert attempts[2].at - attempts[1].at >= 0.95
    assert len({a.headers["x-bridge-delivery"] for a in attempts}) == 1
    assert proc.stop() == 0


def test_dead_channel_does_not_delay_a_live_one(spawn, alerter_env, receiver, feed, r) -> None:
    dead = "  dead: {type: webhook, url: '" + receiver.url + "/dead', secret: x}\n"
    text = _rules(receiver.url, "dead, hook").replace("channels:\n", "channels:\n" + dead)
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(text)
    # /dead holds every request until the end of the test; the call timeout is 30s, so a
    # live channel queued behind it would wait at least that long
    receiver.script("/dead", *[Answer(hang=True) for _ in range(10)])
    feed.set({"etl.lag_seconds": 90})
    proc = spawn("alerter", {**alerter_env, "BRIDGE_ALERTER_HTTP_TIMEOUT": "30"})
    [dead_call] = receiver.wait(lambda: receiver.at("/dead"), what="dead channel called")
    [live] = receiver.wait(lambda: receiver.delivered("/hook"), what="live channel")
    # the live channel got its message while the dead one's first call was still hanging
    assert dead_call.status is None and len(receiver.at("/dead")) == 1
    assert live.json()["rule"] == "lag_high"
    assert proc.stop() == 0


def test_slack_paced_to_min_interval(spawn, alerter_env, receiver, feed) -> None:
    rules = "".join(
        f"""\
  - name: r{i}
    metric: etl.lag_seconds
    op: ">"
    threshold: {i}
    severity: warning
    summary: "r{i} {{{{ value }}}}"
    notify: [slack]
"""
        for i in range(4)
    )
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, rules))
    feed.set({"etl.lag_seconds": 90})
    proc = spawn("alerter", alerter_env)  # BRIDGE_ALERTER_SLACK_MIN_INTERVAL=0.3
    msgs = receiver.wait(
        lambda: len(receiver.delivered("/slack")) == 4 and receiver.delivered("/slack"),
        what="four slack messages",
    )
    gaps = [b.at - a.at for a, b in zip(msgs, msgs[1:], strict=False)]
    assert all(g >= 0.28 for g in gaps), gaps
    assert sorted(m.json()["text"].split()[1] for m in msgs) == ["r0", "r1", "r2", "r3"]
    assert proc.stop() == 0


def test_many_notifications_each_delivered_exactly_once(
    spawn, alerter_env, receiver, feed, r, ns
) -> None:
    """Sweeps racing with acknowledgements must not resend what was just delivered."""
    n = 30
    rules = "".join(
        f"""\
  - name: m{i}
    metric: etl.lag_seconds
    op: ">"
    threshold: {i}
    severity: warning
    summary: "m{i}"
    notify: [hook]
"""
        for i in range(n)
    )
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, rules))
    receiver.script("/hook", *[Answer(hang=0.03) for _ in range(2 * n)])  # slow-ish receiver
    env = {**alerter_env, "BRIDGE_ALERTER_SWEEP_INTERVAL": "0.02"}
    feed.set({"etl.lag_seconds": 1000})
    proc = spawn("alerter", env)
    receiver.wait(lambda: len(receiver.delivered("/hook")) >= n, what="all firing notices")
    feed.set({"etl.lag_seconds": -1})
    receiver.wait(lambda: len(receiver.delivered("/hook")) >= 2 * n, what="all resolved")
    wait_until(lambda: r.hlen(Channels(ns).alert_outbox) == 0, what="outbox drained")
    time.sleep(0.5)
    ids = [h.headers["x-bridge-delivery"] for h in receiver.at("/hook")]
    assert len(ids) == len(set(ids)) == 2 * n
    assert proc.stop() == 0


def test_4xx_is_dropped_at_once_and_retries_stop_at_max_age(
    spawn, alerter_env, receiver, feed, r, ns
) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(_rules(receiver.url, "hook, slack"))
    receiver.script("/hook", Answer(404))  # e.g. a wrong URL: retrying cannot help
    receiver.script("/slack", *[Answer(500) for _ in range(500)])  # down for good
    env = {**alerter_env, "BRIDGE_ALERTER_DELIVERY_MAX_AGE": "1.5"}
    feed.set({"etl.lag_seconds": 90})
    proc = spawn("alerter", env)
    wait_until(lambda: '"delivery.rejected"' in proc.logs(), what="404 rejected")
    wait_until(lambda: '"delivery.expired"' in proc.logs(), what="500s given up")
    wait_until(lambda: r.hlen(Channels(ns).alert_outbox) == 0, what="outbox empty")
    assert [a.status for a in receiver.at("/hook")] == [404]
    slack = receiver.at("/slack")
    assert len(slack) >= 3 and all(a.status == 500 for a in slack)
    n = len(slack)
    time.sleep(0.5)
    assert len(receiver.at("/slack")) == n  # no attempt after expiry
    text = httpx.get(proc.url + "/metrics").text
    assert 'bridge_alerter_notifications_total{channel="hook",outcome="rejected"} 1.0' in text
    assert 'bridge_alerter_notifications_total{channel="slack",outcome="expired"} 1.0' in text
    assert proc.stop() == 0
