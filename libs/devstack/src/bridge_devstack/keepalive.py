"""`python -m bridge_devstack.keepalive --name N -- CMD…`: run CMD, restart it with
exponential backoff when it exits unexpectedly, and stop when told (SIGTERM/SIGINT).

The supervisor (honcho) stops the whole stack as soon as any of its children ends, so a
crashing service is kept inside this wrapper: the others keep running while it restarts.
A child that ran long enough is considered healthy again and the backoff starts over.
If the supervisor itself dies (kill -9), the wrapper notices it was orphaned and stops
its child the same way, so no service is left running without a supervisor.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
HEALTHY_AFTER = 30.0  # seconds of uptime that reset the backoff
FORWARD_AFTER = 1.0  # seconds before the stop signal is passed on to the child
STOP_GRACE = 8.0  # seconds the child gets after SIGTERM before SIGKILL


class Keepalive:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.stop_at = 0.0
        self.parent = os.getppid()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # The supervisor signals the whole process group, so the child normally has the
        # signal already; `_wait` forwards SIGTERM only if it is still running a moment later.
        if not self.stopping.is_set():
            self.stop_at = time.monotonic()
        self.stopping.set()

    def orphaned(self) -> bool:
        """True (and stopping) once the supervisor that started us is gone."""
        if not self.stopping.is_set() and os.getppid() != self.parent:
            self.say("supervisor gone; stopping")
            self.stop_at = time.monotonic()
            self.stopping.set()
        return self.stopping.is_set()

    def say(self, message: str) -> None:
        print(f"[keepalive] {self.name}: {message}", flush=True)

    def run(self) -> int:
        attempt = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.child = subprocess.Popen(self.argv)  # noqa: S603 - the supervisor's own argv
            except OSError as exc:
                self.say(f"cannot start {self.argv[0]}: {exc}")
                return 127
            code = self._wait()
            if self.stopping.is_set():
                return 0
            if code == 0:
                self.say("finished")
                return 0
            if time.monotonic() - started >= HEALTHY_AFTER:
                attempt = 0
            delay = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
            attempt += 1
            self.restarts += 1
            self.say(f"exited with {code}; restart #{self.restarts} in {delay:.1f}s")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if self.stopping.wait(min(0.2, deadline - time.monotonic())) or self.orphaned():
                    return 0
        return 0

    def _wait(self) -> int:
        """The child's exit code; when stopping: SIGTERM after a moment, SIGKILL at the end."""
        assert self.child is not None
        forwarded = False
        while True:
            try:
                return self.child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                if not self.orphaned():
                    continue
                waited = time.monotonic() - self.stop_at
                if not forwarded and waited >= FORWARD_AFTER:
                    # SIGTERM is idempotent for our services (SIGINT twice forces an exit)
                    self.child.send_signal(signal.SIGTERM)
                    forwarded = True
                if waited >= STOP_GRACE:
                    self.say("did not stop in time; killing it")
                    self.child.kill()
                    return self.child.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bridge-keepalive")
    parser.add_argument("--name", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    keeper = Keepalive(args.name, command)
    signal.signal(signal.SIGTERM, keeper.on_signal)
    signal.signal(signal.SIGINT, keeper.on_signal)
    sys.exit(keeper.run())


if __name__ == "__main__":
    main()
