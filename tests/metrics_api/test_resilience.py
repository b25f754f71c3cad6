"""Bad configuration exits 2 with one line; a database that is down degrades answers but
never stops the service."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tests.support.ops import ops_get


def test_bad_configuration_exits_2_with_one_line(bridge_env) -> None:
    env = {**os.environ, **bridge_env, "BRIDGE_DASHBOARD_GATEWAY_URL": "ftp://gw"}
    proc = subprocess.run(
        [sys.executable, "-m", "bridge_metrics_api"], env=env, capture_output=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "BRIDGE_DASHBOARD_GATEWAY_URL" in lines[0]


def test_target_database_down_degrades_but_serves(spawn, bridge_env, migrated_dsn) -> None:
    env = {
        **bridge_env,
        "BRIDGE_TARGET_DSN": "postgresql://postgres@127.0.0.1:5432/bridge_no_such_db_mapi",
        "BRIDGE_METRICS_QUERY_TIMEOUT": "1",
    }
    api = spawn("metrics_api", env, wait_ready=False)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(api.url + "/healthz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ready = httpx.get(api.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["checks"]["target_db"] != "ok"
    overview = ops_get(api.url + "/api/v1/dashboard/overview", timeout=10)
    assert overview.status_code == 200
    body = overview.json()
    assert body["audit"] is None and "target database" in body["errors"]["audit"]
    assert body["intents"] == {"by_status": {}, "total": 0, "failed_5m": 0}
    timeline = ops_get(api.url + "/api/v1/dashboard/timeline", timeout=10)
    assert timeline.status_code == 503 and timeline.json()["error"] == "unavailable"
    # bad parameters are still checked first, and the service is still alive
    assert ops_get(api.url + "/api/v1/dashboard/timeline?bucket=2m").status_code == 422
    assert api.alive()
