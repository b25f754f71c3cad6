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


def test_one_off_runs_beside_a_running_worker(spawn, etl_env, clean) -> None:
    """`backfill` and `--once` use the worker's environment, port included, and still run:
    a one-off run listens on an ephemeral port; options before the subcommand count."""
    from tests.etl_worker.audit import insert_rows, source_sum, target_sum

    insert_rows(clean, 50)
    worker = spawn("etl", {**etl_env, "BRIDGE_ETL_MODE": "event"})
    same_env = {**etl_env, "BRIDGE_ETL_PORT": str(worker.port)}
    res = _run(["--batch-size", "7", "backfill", "--since", "2000-01-01T00:00:00Z"], same_env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert '"batch_size": 7' in res.stdout, "--batch-size before the subcommand was dropped"
    assert target_sum(clean) == source_sum(clean)
    insert_rows(clean, 30, start=50)
    res = _run(["--once", "--mode", "polling"], same_env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert target_sum(clean) == source_sum(clean)
    assert worker.alive()
    assert httpx.get(worker.url + "/healthz").json()["status"] == "ok"
    # a backfill takes no mode: refused with a reason rather than ignored
    res = _run(["--mode", "event", "backfill", "--since", "2000-01-01T00:00:00Z"], same_env)
    assert res.returncode == 2 and "do not apply to backfill" in res.stderr.splitlines()[-1]
    assert worker.stop() == 0
