"""The metrics API across a Redis data loss (a PRIVATE non-persistent redis-server killed
with -9 and restarted empty, then FLUSHALL): snapshots and live figures come back by
themselves, with no restart of the service."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from bridge_common.channels import Channels
from bridge_common.snapshots import snapshot_from_entry

from tests.support.cluster import RedisNode, redis_server
from tests.support.ops import OPS


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisNode]:
    with redis_server(tmp_path / "redis", appendonly=False) as node:
        yield node


def wait_for(pred, timeout: float = 30.0, what: str = ""):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (httpx.HTTPError, redis.RedisError) as exc:
            last = repr(exc)
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def snapshots_after(url: str, ns: str, since: float) -> int:
    """Snapshots in the stream published after `since` (epoch seconds)."""
    with redis.Redis.from_url(url) as c:
        entries = c.xrange(Channels(ns).snapshot_stream)
        latest = c.get(Channels(ns).snapshot_latest)
    ts = [snapshot_from_entry(fields).ts for _, fields in entries]
    assert ts == sorted(ts), "snapshot times must keep increasing"
    return sum(1 for t in ts if t > since) if latest else 0


def live_and_ready(api_url: str, instance: str) -> bool:
    services = httpx.get(api_url + "/api/v1/services", timeout=5, auth=OPS).json()["services"]
    listed = any(s["instance"] == instance and s["state"] == "up" for s in services)
    overview = httpx.get(api_url + "/api/v1/dashboard/overview", timeout=5, auth=OPS).json()
    ready = httpx.get(api_url + "/readyz", timeout=5).status_code == 200
    return listed and ready and not overview["errors"]


@pytest.mark.parametrize("how", ["kill-9", "flushall"])
def test_snapshots_and_live_figures_recover(spawn, api_env, private_redis, namespace, how) -> None:
    env = {
        **api_env,
        "BRIDGE_REDIS_URL": private_redis.url,
        "BRIDGE_SNAPSHOT_INTERVAL": "0.2",
        "BRIDGE_HEARTBEAT_INTERVAL": "0.2",
        "BRIDGE_METRICS_AUTH": "disabled",
        "BRIDGE_METRICS_CACHE_TTL": "0.2",
    }
    api = spawn("metrics_api", env)
    instance = httpx.get(api.url + "/healthz").json()["instance"]
    wait_for(lambda: snapshots_after(private_redis.url, namespace, 0) >= 2, what="snapshots")
    wait_for(lambda: live_and_ready(api.url, instance), what="live figures before")

    lost_at = time.time()
    if how == "kill-9":
        private_redis.restart(hard=True)
    else:
        with redis.Redis.from_url(private_redis.url) as c:
            c.flushall()

    # new snapshots in the emptied Redis, the instance back in the live figures
    wait_for(
        lambda: snapshots_after(private_redis.url, namespace, lost_at) >= 3,
        what="snapshots after the loss",
    )
    wait_for(lambda: live_and_ready(api.url, instance), what="live figures after the loss")
    text = httpx.get(api.url + "/metrics").text
    assert "bridge_metrics_snapshot_leader 1.0" in text
    assert api.alive()
    assert api.stop() == 0
