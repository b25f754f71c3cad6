"""Command line and start-up: bad configuration, an unmigrated target, health endpoints."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge_etl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "BRIDGE_ETL_PORT": "0", **env},
    )


def test_bad_configuration_exits_2_with_one_line(bridge_env) -> None:
    for args, env, needle in [
        (["--batch-size", "0"], {}, "--batch-size"),
        ([], {"BRIDGE_ETL_MODE": "sideways"}, "BRIDGE_ETL_MODE"),
        (["backfill", "--since", "2026-01-01T00:00:00", "--until", "x"], {}, "--since"),
    ]:
        res = _run(args, {**bridge_env, **env})
        assert res.returncode == 2, (args, res.stderr)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert lines and needle in lines[-1], (args, res.stderr)


def test_unmigrated_target_exits_1_naming_bridge_migrate(spawn, bridge_env, db_dsn) -> None:
    proc = spawn("etl", {**bridge_env, "BRIDGE_SOURCE_DSN": db_dsn}, wait_ready=False)
    assert proc.proc.wait(30) == 1
    assert "bridge-migrate" in proc.logs()


def test_health_ready_and_metrics(spawn, bridge_env, migrated_dsn) -> None:
    proc = spawn("etl", {**bridge_env, "BRIDGE_ETL_MODE": "hybrid"})
    assert httpx.get(proc.url + "/healthz").json()["status"] == "ok"
    checks = httpx.get(proc.url + "/readyz").json()["checks"]
    assert checks == {"redis": "ok", "target": "ok", "source": "ok"}
    text = httpx.get(proc.url + "/metrics").text
    for name in (
        "bridge_etl_lag_seconds",
        "bridge_etl_rows_per_second",
        "bridge_etl_polling_watermark",
    ):
        assert name in text
    assert proc.stop() == 0
