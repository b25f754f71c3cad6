"""Replicas and crashes: one notification from two alerters, no duplicate after a restart,
nothing lost when the process is killed (SIGKILL) in the middle of a delivery."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bridge_common.channels import Channels

from .conftest import rules_yaml, wait_until
from .receiver import Answer

RULE = """\
  - name: failed_intents
    metric: intents.failed_5m
    op: ">="
    threshold: 5
    for: 300ms
    severity: error
    summary: "{{ value }} failed intents"
    notify: [hook, slack]
"""


def _firing(r, ns: str) -> list[dict]:
    states = [json.loads(v) for v in r.hvals(Channels(ns).alert_state)]
    return [s for s in states if s["state"] == "firing"]


def test_two_alerters_send_one_notification(spawn, alerter_env, receiver, feed, r, ns) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    feed.set({"intents.failed_5m": 0})
    a = spawn("alerter", alerter_env)
    b = spawn("alerter", alerter_env)
    feed.set({"intents.failed_5m": 9})
    receiver.wait(lambda: receiver.delivered("/hook") and receiver.delivered("/slack"))
    time.sleep(1.0)  # both keep seeing the breaching snapshots
    assert len(receiver.at("/hook")) == 1 and len(receiver.at("/slack")) == 1
    holder = r.get(Channels(ns).leader("alerter")).decode()
    leader, standby = (a, b) if str(a.pid) in holder else (b, a)
    # the leader goes away: the standby takes over the same state, still no duplicate
    assert leader.stop() == 0
    wait_until(lambda: '"leader.acquired"' in standby.logs(), what="standby took over")
    wait_until(lambda: '"evaluator.took_over"' in standby.logs(), what="standby evaluating")
    time.sleep(0.8)
    assert len(receiver.at("/hook")) == 1 and len(receiver.at("/slack")) == 1
    # and it is the one that resolves it, once
    feed.set({"intents.failed_5m": 0})
    receiver.wait(lambda: len(receiver.delivered("/hook")) == 2, what="resolved")
    assert [h.json()["state"] for h in receiver.at("/hook")] == ["firing", "resolved"]
    assert standby.stop() == 0


def test_restart_while_firing_does_not_renotify(spawn, alerter_env, receiver, feed, r, ns) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    feed.set({"intents.failed_5m": 9})
    proc = spawn("alerter", alerter_env)
    receiver.wait(lambda: receiver.delivered("/hook") and receiver.delivered("/slack"))
    [before] = _firing(r, ns)
    assert proc.stop() == 0
    proc2 = spawn("alerter", alerter_env)
    wait_until(lambda: '"evaluator.took_over"' in proc2.logs(), what="new leader")
    time.sleep(1.0)  # ten more breaching snapshots evaluated by the new process
    assert len(receiver.at("/hook")) == 1 and len(receiver.at("/slack")) == 1
    [after] = _firing(r, ns)
    assert after["started_at"] == before["started_at"]
    assert after["last_notified_at"] == before["last_notified_at"]
    feed.set({"intents.failed_5m": 1})
    receiver.wait(lambda: len(receiver.delivered("/hook")) == 2, what="resolved")
    assert receiver.delivered("/hook")[1].json()["started_at"] == before["started_at"]
    assert proc2.stop() == 0


def test_sigkill_mid_delivery_is_delivered_after_restart(
    spawn, alerter_env, receiver, feed, r, ns
) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    receiver.script("/hook", Answer(hang=True))  # the first request never gets an answer
    feed.set({"intents.failed_5m": 9})
    proc = spawn("alerter", alerter_env)
    [stuck] = receiver.wait(lambda: receiver.at("/hook"), what="delivery in flight")
    receiver.wait(lambda: receiver.delivered("/slack"), what="slack")
    # only the webhook delivery is left unacknowledged
    wait_until(lambda: r.hlen(Channels(ns).alert_outbox) == 1, what="others acked")
    [pending] = r.hkeys(Channels(ns).alert_outbox)
    assert pending.endswith(b":hook")
    proc.kill()  # kill -9 while the webhook call is in flight
    proc2 = spawn("alerter", alerter_env)
    [done] = receiver.wait(lambda: receiver.delivered("/hook"), what="replayed delivery")
    assert stuck.status is None  # the killed attempt never completed
    assert done.headers["x-bridge-delivery"] == stuck.headers["x-bridge-delivery"]
    assert done.body == stuck.body
    wait_until(lambda: r.hlen(Channels(ns).alert_outbox) == 0, what="outbox drained")
    time.sleep(0.5)
    # delivered exactly once to each channel; the alert did not fire twice
    assert len(receiver.delivered("/hook")) == 1 and len(receiver.delivered("/slack")) == 1
    assert len(_firing(r, ns)) == 1
    events = r.xrange(Channels(ns).stream("alerts"))
    assert len(events) == 1
    assert proc2.stop() == 0
