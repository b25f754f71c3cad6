"""One supervisor for the whole stack: honcho runs every child (each inside the keep-alive
wrapper), prefixes its output with its name, and on Ctrl-C/SIGTERM stops them all (SIGTERM
to each process group, SIGKILL after a grace period). A watcher thread polls `/readyz` and
prints the banner once everything answers."""

from __future__ import annotations

import datetime
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from honcho.manager import Manager
from honcho.printer import Message, Printer

from .stack import Stack

READY_REPORT_AFTER = 60.0  # say what is still not ready after this many seconds


class ReadinessWatcher(threading.Thread):
    """Polls every service's `/readyz`; calls `on_ready` once, when all answer 200."""

    def __init__(self, stack: Stack, on_ready: Callable[[], None], say: Callable[[str], None]):
        super().__init__(name="readiness", daemon=True)
        self.stack = stack
        self.on_ready = on_ready
        self.say = say
        self.done = threading.Event()

    def pending(self, client: httpx.Client) -> list[str]:
        waiting = []
        for proc in self.stack.processes:
            if proc.port is None:
                continue
            try:
                ok = client.get(self.stack.url(proc.name) + "/readyz").status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                waiting.append(proc.name)
        return waiting

    def run(self) -> None:
        started = time.monotonic()
        reported = False
        with httpx.Client(timeout=2.0) as client:
            while not self.done.is_set():
                waiting = self.pending(client)
                if not waiting:
                    self.on_ready()
                    return
                if not reported and time.monotonic() - started > READY_REPORT_AFTER:
                    reported = True
                    self.say(f"still waiting for /readyz of: {', '.join(waiting)}")
                self.done.wait(0.25)


def run(stack: Stack, cwd: Path, banner: Callable[[], str]) -> int:
    """Run the stack until Ctrl-C/SIGTERM (exit 0) or until a child gives up (its code)."""
    manager = Manager(Printer(sys.stdout))
    for proc in stack.processes:
        manager.add_process(proc.name, proc.command_line(), env=stack.env, cwd=str(cwd))

    def say(text: str) -> None:
        manager.events.put(
            Message(
                type="line", data=text + "\n", time=datetime.datetime.now(), name="up", colour=None
            )
        )

    def ready() -> None:
        # one write: the banner must not interleave with the children's lines
        sys.stdout.write(banner())
        sys.stdout.flush()

    watcher = ReadinessWatcher(stack, ready, say)
    watcher.start()
    try:
        manager.loop()
    finally:
        watcher.done.set()
        watcher.join(5)
    code: Any = manager.returncode
    # honcho reports 130/143 for a signal: that is the normal way to stop the stack
    if code in (130, 143, None):
        return 0
    return int(code)
