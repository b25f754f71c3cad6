"""The alerter across a Redis data loss (a PRIVATE non-persistent redis-server killed with
-9 and restarted empty): delivery ids stay unique, the alert state is rebuilt, and no storm
of repeated notifications reaches the receiver (a local HTTP server)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from bridge_common.channels import Channels
from bridge_common.events import MetricsSnapshot
from bridge_common.redis import create_redis
from bridge_common.settings import BridgeSettings
from bridge_common.snapshots import publish_snapshot
from redis.exceptions import RedisError

from tests.support.cluster import RedisNode, redis_server

from .conftest import rules_yaml, wait_until
from .receiver import Answer

RULE = """\
  - name: error_rate_high
    metric: audit.error_rate_5m
    op: ">"
    threshold: 0.05
    for: 300ms
    repeat_interval: 1h
    severity: critical
    summary: "Audit error rate {{ value }} above {{ threshold }}"
    notify: [hook]
"""


class SturdyFeed:
    """Snapshots every 0.1 s, like the metrics API, riding out the Redis restart."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.channels = Channels(namespace)
        self.metrics: dict[str, float | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    async def _loop(self) -> None:
        client = create_redis(BridgeSettings(BRIDGE_REDIS_URL=self.url))
        try:
            while not self._stop.is_set():
                snap = MetricsSnapshot(ts=time.time(), metrics=dict(self.metrics), source="test")
                try:
                    await publish_snapshot(client, self.channels, snap)
                except (RedisError, OSError):
                    pass  # Redis is restarting: the next one goes through
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    def __enter__(self) -> SturdyFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisNode]:
    with redis_server(tmp_path / "redis", appendonly=False) as node:
        yield node


def counter(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def firing_state(url: str, ns: str) -> bytes | None:
    with redis.Redis.from_url(url) as c:
        for v in c.hvals(Channels(ns).alert_state):
            if b'"firing"' in v:
                return bytes(v)
    return None


def evaluations_pass(proc, n: int) -> None:  # noqa: ANN001
    """Wait until the alerter evaluated `n` more snapshots."""
    start = counter(proc.url, "bridge_alerter_evaluations_total")
    wait_until(
        lambda: counter(proc.url, "bridge_alerter_evaluations_total") >= start + n,
        what=f"{n} evaluations",
    )


def test_leader_survives_redis_loss_without_renotifying(
    spawn, alerter_env, receiver, private_redis, ns
) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    env = {**alerter_env, "BRIDGE_REDIS_URL": private_redis.url}
    with SturdyFeed(private_redis.url, ns) as feed:
        feed.metrics = {"audit.error_rate_5m": 0.2}
        proc = spawn("alerter", env)
        [first] = receiver.wait(lambda: receiver.delivered("/hook"), what="firing webhook")
        first_id = uuid.UUID(first.headers["x-bridge-delivery"])
        assert first_id.version == 7
        started_at = first.json()["started_at"]
        # a maintenance silence of another rule, seen by the leader before the loss
        silence = {
            "id": "maint1",
            "rule": "other_rule",
            "starts_at": time.time(),
            "ends_at": time.time() + 3600,
            "comment": "maintenance",
            "created_by": "test",
        }
        with redis.Redis.from_url(private_redis.url) as c:
            c.hset(Channels(ns).silences, "maint1", json.dumps(silence))
        evaluations_pass(proc, 3)

        private_redis.restart(hard=True)  # no persistence: state, outbox, lease all gone
        wait_until(lambda: firing_state(private_redis.url, ns), what="state written back")
        wait_until(
            lambda: counter(proc.url, "bridge_alerter_states_restored_total") >= 1,
            what="restore counted",
        )
        with redis.Redis.from_url(private_redis.url) as c:
            kept = wait_until(lambda: c.hget(Channels(ns).silences, "maint1"), what="silence")
        assert json.loads(kept) == silence
        evaluations_pass(proc, 20)
        assert len(receiver.at("/hook")) == 1, "the surviving leader must not notify again"

        feed.metrics = {"audit.error_rate_5m": 0.0}
        hooks = receiver.wait(lambda: receiver.delivered("/hook")[1:], what="resolved")
        resolved = hooks[0]
        assert resolved.json()["state"] == "resolved"
        assert resolved.json()["started_at"] == started_at  # the incident kept its start
        second_id = uuid.UUID(resolved.headers["x-bridge-delivery"])
        assert second_id.version == 7 and second_id != first_id
        assert proc.stop() == 0


def test_restart_with_redis_loss_renotifies_once_marked_refound(
    spawn, alerter_env, receiver, private_redis, ns
) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    env = {**alerter_env, "BRIDGE_REDIS_URL": private_redis.url}
    with SturdyFeed(private_redis.url, ns) as feed:
        feed.metrics = {"audit.error_rate_5m": 0.0}
        proc = spawn("alerter", env)
        evaluations_pass(proc, 3)
        # a breach that starts after the first evaluation is a new incident, not re-found
        feed.metrics = {"audit.error_rate_5m": 0.2}
        [first] = receiver.wait(lambda: receiver.delivered("/hook"), what="firing webhook")
        assert "re-found" not in first.json()["summary"]
        assert proc.stop() == 0

        # the alerter and Redis go down together: nothing remembers the alert
        private_redis.restart(hard=True)
        proc = spawn("alerter", env)
        hooks = receiver.wait(lambda: receiver.delivered("/hook")[1:], what="re-found notice")
        again = hooks[0].json()
        assert again["state"] == "firing" and "re-found" in again["summary"]
        assert hooks[0].headers["x-bridge-delivery"] != first.headers["x-bridge-delivery"]
        assert counter(proc.url, "bridge_alerter_refound_total") == 1
        evaluations_pass(proc, 20)
        assert len(receiver.at("/hook")) == 2, "re-notified at most once"
        assert proc.stop() == 0


TWO_RULES = (
    RULE
    + """\
  - name: intents_failing
    metric: intents.failed_5m
    op: ">="
    threshold: 10
    for: 300ms
    repeat_interval: 1h
    severity: warning
    summary: "{{ value }} intents failed"
    notify: [hook]
"""
)


@pytest.mark.parametrize("outage", [0.0, 2.5], ids=["restart", "outage-longer-than-lease"])
def test_queued_notification_survives_redis_loss(
    spawn, alerter_env, receiver, private_redis, ns, outage
) -> None:
    """A notification the surviving leader had queued when Redis lost the outbox is still
    delivered (and written back), not dropped — also when the outage outlasts the lease
    (1 s here) and the leader has to win it again."""
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, TWO_RULES))
    env = {
        **alerter_env,
        "BRIDGE_REDIS_URL": private_redis.url,
        "BRIDGE_ALERTER_HTTP_TIMEOUT": "30",
    }
    receiver.script("/hook", Answer(hang=True))  # the first notice blocks the channel
    outbox = Channels(ns).alert_outbox
    with SturdyFeed(private_redis.url, ns) as feed:
        proc = spawn("alerter", env)
        evaluations_pass(proc, 3)
        feed.metrics = {"audit.error_rate_5m": 0.2, "intents.failed_5m": 12}
        receiver.wait(lambda: receiver.at("/hook"), what="first notice in flight")
        with redis.Redis.from_url(private_redis.url) as c:
            wait_until(
                lambda: len([f for f in c.hkeys(outbox) if f.endswith(b":hook")]) == 2,
                what="second notice queued behind it",
            )
        private_redis.restart(hard=True, down_for=outage)
        wait_until(lambda: firing_state(private_redis.url, ns), what="state written back")
        receiver.release()
        hooks = receiver.wait(
            lambda: len(receiver.delivered("/hook")) >= 2 and receiver.delivered("/hook"),
            what="both notices delivered",
        )
        rules = sorted(h.json()["rule"] for h in hooks)
        assert rules == ["error_rate_high", "intents_failing"]
        with redis.Redis.from_url(private_redis.url) as c:
            wait_until(lambda: c.hlen(outbox) == 0, what="everything acknowledged")
        assert proc.stop() == 0
