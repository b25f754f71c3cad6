"""Run a Bridge Lite service as a real subprocess on a free port, as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .infra import free_port

#: service name → (python module, port variable)
SERVICES: dict[str, tuple[str, str]] = {
    "notifier": ("bridge_notifier", "BRIDGE_NOTIFIER_PORT"),
    "gateway": ("bridge_gateway", "BRIDGE_GATEWAY_PORT"),
    "etl": ("bridge_etl", "BRIDGE_ETL_PORT"),
    "metrics_api": ("bridge_metrics_api", "BRIDGE_METRICS_API_PORT"),
    "alerter": ("bridge_alerter", "BRIDGE_ALERTER_PORT"),
}


class ServiceProcess:
    """One service subprocess. Logs go to `log_path`; `url` is its HTTP root."""

    def __init__(
        self,
        service: str,
        env: dict[str, str],
        log_dir: Path,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        module, port_var = SERVICES[service]
        self.service = service
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, port_var: str(self.port), "BRIDGE_HOST": "127.0.0.1"}
        self.cmd = [sys.executable, "-m", module, *(args or [])]
        self.log_path = log_dir / f"{service}-{self.port}-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.service} exited with {self.proc.returncode}:\n{self.logs()[-4000:]}"
                )
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.service} not ready in {timeout}s ({last}):\n{self.logs()[-4000:]}"
        )

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no cleanup, as a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Graceful stop; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        return int(self.proc.returncode)

    def restart(self, wait_ready: bool = True) -> ServiceProcess:
        self.stop()
        return self.start(wait_ready=wait_ready)
