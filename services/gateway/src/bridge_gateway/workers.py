"""Every core: `BRIDGE_GATEWAY_WORKERS` processes serving one port.

With more than one worker, `bridge-gateway` is a supervisor. It starts N copies of itself
(`bridge-gateway --port P --reuse-port`); each is a whole gateway — its own Redis
connections and live subscriber, its own clients and its own heartbeat instance — and
listens on the same host:port with `SO_REUSEPORT`, so the kernel spreads new connections
over the workers. Nothing is shared between them, so nothing needs coordinating: the
metrics API sums `connections` over every gateway heartbeat, and a worker is counted like
a replica on another host. A client's subscriptions live in the one worker it reached.

The supervisor holds a bound (not listening) socket on the port for its whole life, so a
port chosen by the kernel (0) is the same for every worker and no other program takes the
port while a worker restarts. It forwards SIGTERM/SIGINT/SIGHUP, restarts a worker that
dies (backoff 0.5 s doubling to 30 s), gives up when workers keep dying right after
starting, and exits non-zero if any worker did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

from bridge_common.logging import configure_logging, get_logger

from .settings import Settings

#: a worker that ran this long before dying restarts without backoff
STABLE_AFTER = 60.0
#: consecutive quick deaths after which the supervisor stops everything
MAX_QUICK_DEATHS = 5


async def watch_supervisor(stop: asyncio.Event) -> None:
    """In a worker: shut down (gracefully) when the supervisor is gone, e.g. killed with
    SIGKILL, so no orphaned worker keeps serving the port."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            get_logger("gateway.worker").warning("worker.supervisor_gone", supervisor=parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port with SO_REUSEPORT (not listening yet)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class Supervisor:
    """Starts, watches and stops the worker processes (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.workers
        configure_logging(
            settings.log_format, settings.log_level, service="gateway", instance="supervisor"
        )
        self.log = get_logger("gateway.supervisor")
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = False
        self.failed = False
        self.port = settings.port

    async def run(self) -> int:
        reserve = reuse_port_socket(self.settings.host, self.settings.port)
        self.port = reserve.getsockname()[1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        self.log.info("supervisor.started", workers=self.count, port=self.port)
        try:
            watchers = [asyncio.create_task(self._keep(i, stop)) for i in range(self.count)]
            await stop.wait()
            self.stopping = True
            self._forward(signal.SIGTERM)
            deadline = self.settings.shutdown_timeout + 5.0
            done, late = await asyncio.wait(watchers, timeout=deadline)
            if late:
                self.log.warning("supervisor.killing", workers=len(late))
                self._forward(signal.SIGKILL)
                await asyncio.wait(late, timeout=5.0)
                self.failed = True
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            reserve.close()
        self.log.info("supervisor.stopped", failed=self.failed)
        return 1 if self.failed else 0

    def _forward(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    async def _keep(self, index: int, stop: asyncio.Event) -> None:
        """Run worker `index` until shutdown, restarting it when it dies."""
        delay, quick = 0.5, 0
        while True:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bridge_gateway",
                "--port",
                str(self.port),
                "--reuse-port",
            )
            self.procs[index] = proc
            code = await proc.wait()
            if self.stopping:
                if code != 0:
                    self.log.warning("supervisor.worker_failed", worker=index, code=code)
                    self.failed = True
                return
            lived = time.monotonic() - started
            quick = 0 if lived >= STABLE_AFTER else quick + 1
            if lived >= STABLE_AFTER:
                delay = 0.5
            self.log.error("supervisor.worker_died", worker=index, code=code, lived=lived)
            if quick >= MAX_QUICK_DEATHS:
                self.log.error("supervisor.giving_up", worker=index, deaths=quick)
                self.failed = True
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            delay = min(delay * 2, 30.0)
