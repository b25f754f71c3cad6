from __future__ import annotations

import signal
import time

import httpx
import orjson
import redis
from bridge_common.channels import Channels


def test_service_health_ready_metrics_heartbeat_and_sigterm(
    spawn, bridge_env, redis_url, namespace
) -> None:
    proc = spawn("notifier", bridge_env, wait_ready=True)
    assert httpx.get(proc.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(proc.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["redis"] == "ok"
    metrics = httpx.get(proc.url + "/metrics")
    assert metrics.status_code == 200 and "process_resident_memory_bytes" in metrics.text
    r = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 5
    beats = {}
    while time.monotonic() < deadline and not beats:
        beats = r.hgetall(Channels(namespace).services)
        time.sleep(0.1)
    [(field, raw)] = [(k, v) for k, v in beats.items() if k.startswith(b"notifier/")]
    hb = orjson.loads(raw)
    assert hb["service"] == "notifier" and hb["status"]["port"] == proc.port
    assert proc.stop(signal.SIGTERM) == 0
    assert r.hget(Channels(namespace).services, field) is None  # removed on clean exit
    assert '"service.stopped"' in proc.logs()
    r.close()


def test_readyz_reports_unreachable_redis(spawn, bridge_env) -> None:
    env = {**bridge_env, "BRIDGE_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = spawn("notifier", env, wait_ready=False)
    deadline = time.monotonic() + 10
    while True:
        try:
            resp = httpx.get(proc.url + "/readyz")
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert resp.status_code == 503
    assert resp.json()["checks"]["redis"] != "ok"
    assert httpx.get(proc.url + "/healthz").status_code == 200
    assert proc.stop(signal.SIGINT) == 0
