"""Alerter fixtures: a per-test namespace, a rules file, a snapshot feed, a fake Slack."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bridge_common.channels import Channels
from bridge_common.events import MetricsSnapshot
from bridge_common.redis import create_redis
from bridge_common.settings import BridgeSettings
from bridge_common.snapshots import publish_snapshot

from tests.support import infra

from .receiver import Receiver


@pytest.fixture
def ns(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis namespace for this test only (alerter state and leases are per namespace)."""
    name = infra.unique_name("ta", request.node.name)
    yield name
    infra.delete_namespace(redis_url, name)
    infra.delete_namespace(redis_url, name.replace("{", ""))  # hash-tagged forms too


@pytest.fixture
def alerter_env(redis_url: str, ns: str, tmp_path: Path) -> dict[str, str]:
    return {
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": ns,
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "info",
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
        "BRIDGE_ALERT_RULES": str(tmp_path / "alerts.yaml"),
        "BRIDGE_ALERTER_LEASE_TTL": "1",
        "BRIDGE_ALERTER_RESOLVE_GRACE": "0",
        "BRIDGE_ALERTER_RETRY_BASE_DELAY": "0.05",
        "BRIDGE_ALERTER_RETRY_MAX_DELAY": "0.3",
        "BRIDGE_ALERTER_HTTP_TIMEOUT": "5",
        "BRIDGE_ALERTER_SLACK_MIN_INTERVAL": "0.3",
        "BRIDGE_ALERTER_SWEEP_INTERVAL": "0.3",
        "BRIDGE_SHUTDOWN_TIMEOUT": "3",
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def rules_yaml(receiver_url: str, rules: str, secret: str = "s3cret") -> str:
    """A rules file with a Slack channel and a webhook channel on the receiver."""
    return (
        "channels:\n"
        f"  slack: {{type: slack, url: '{receiver_url}/slack'}}\n"
        f"  hook: {{type: webhook, url: '{receiver_url}/hook', secret: '{secret}'}}\n"
        f"rules:\n{rules}"
    )


class Feed:
    """Publishes a snapshot of `metrics` every `interval` seconds from a background thread,
    the way the metrics API does (same `publish_snapshot` call)."""

    def __init__(self, redis_url: str, namespace: str, interval: float = 0.1) -> None:
        self.redis_url = redis_url
        self.channels = Channels(namespace)
        self.interval = interval
        self.metrics: dict[str, float | None] = {}
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def set(self, metrics: dict[str, float | None]) -> None:
        self.metrics = dict(metrics)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        client = create_redis(BridgeSettings(BRIDGE_REDIS_URL=self.redis_url))
        try:
            while not self._stop.is_set():
                snap = MetricsSnapshot(ts=time.time(), metrics=dict(self.metrics), source="test")
                await publish_snapshot(client, self.channels, snap)
                self.published += 1
                await asyncio.sleep(self.interval)
        finally:
            await client.aclose()

    def start(self) -> Feed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def feed(redis_url: str, ns: str) -> Iterator[Feed]:
    f = Feed(redis_url, ns).start()
    yield f
    f.stop()


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cond()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or cond}")
