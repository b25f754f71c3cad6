"""`.env` behaves like the environment when a service is started directly, the port included
(`BRIDGE_<SERVICE>_PORT`); the environment wins over the file; `BRIDGE_PORT` moves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.infra import free_port
from tests.support.processes import ServiceProcess
from tests.support.waiting import eventually


def _start_in(cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    clean.update(env)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge_gateway"], cwd=cwd, env=clean, stdout=out, stderr=out
        )


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("from_env", [False, True])
def test_service_port_from_dot_env(
    tmp_path: Path, redis_url: str, namespace: str, from_env: bool
) -> None:
    in_file, in_env, everywhere = free_port(), free_port(), free_port()
    (tmp_path / ".env").write_text(
        f"BRIDGE_GATEWAY_PORT={in_file}\n"
        f"BRIDGE_PORT={everywhere}\n"  # undocumented once; now read by nothing
        f"BRIDGE_REDIS_URL={redis_url}\n"
        f"BRIDGE_NAMESPACE={namespace}\n"
        "BRIDGE_AUTH=disabled\n"
        "BRIDGE_HOST=127.0.0.1\n"
    )
    env = {"BRIDGE_GATEWAY_PORT": str(in_env)} if from_env else {}
    proc = _start_in(tmp_path, env, tmp_path / "gateway.log")
    expected = in_env if from_env else in_file
    try:
        eventually(lambda: _answers(expected) or proc.poll() is not None, what="gateway up")
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
        assert _answers(expected)
        assert not _answers(everywhere)
        if from_env:
            assert not _answers(in_file)
    finally:
        _stop(proc)


def test_helper_still_overrides_the_file(tmp_path: Path) -> None:
    """ServiceProcess sets the port variable in the environment: it beats any `.env`."""
    proc = ServiceProcess("gateway", {}, tmp_path)
    assert proc.env["BRIDGE_GATEWAY_PORT"] == str(proc.port)
