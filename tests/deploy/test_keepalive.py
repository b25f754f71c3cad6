"""The keep-alive wrapper `just up` puts around every service: a crashing child is
restarted with growing delays, a finished child is not, and SIGTERM stops both."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

CRASH_TWICE = textwrap.dedent(
    """
    import os, sys, time
    runs = open(sys.argv[1], "a+")
    runs.write(f"{os.getpid()}\\n"); runs.flush()
    runs.seek(0)
    if len(runs.read().split()) <= 2:
        sys.exit(3)
    while True:
        time.sleep(0.1)
    """
)


def keepalive(tmp_path: Path, code: str, *args: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(code)
    argv = [sys.executable, "-m", "bridge_devstack.keepalive", "--name", "child", "--",
            sys.executable, str(script), *args]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_crashing_child_is_restarted_with_backoff_then_stopped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = keepalive(tmp_path, CRASH_TWICE, str(runs))
    try:
        wait_for(lambda: runs.exists() and len(runs.read_text().split()) == 3, timeout=20)
        pids = [int(p) for p in runs.read_text().split()]
        assert psutil.pid_exists(pids[-1])
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "exited with 3; restart #1 in 0.5s" in out
    assert "exited with 3; restart #2 in 1.0s" in out
    assert "restart #3" not in out
    wait_for(lambda: not psutil.pid_exists(pids[-1]), timeout=5)


def test_child_that_finishes_is_not_restarted(tmp_path: Path) -> None:
    proc = keepalive(tmp_path, "print('done')")
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert out.count("done") == 1
    assert "finished" in out and "restart" not in out


def test_sigterm_during_backoff_stops_at_once(tmp_path: Path) -> None:
    proc = keepalive(tmp_path, "import sys; sys.exit(5)")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the wrapper is in its backoff sleep after this line
        assert "exited with 5; restart #1" in first
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
        assert time.monotonic() - started < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert "restart #3" not in rest


def test_wrapper_and_child_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """kill -9 of the supervisor must not leave a service running under init."""
    child = tmp_path / "child.py"
    child.write_text("import time\nwhile True:\n    time.sleep(0.1)\n")
    pids = tmp_path / "pids"
    supervisor = tmp_path / "supervisor.py"
    supervisor.write_text(textwrap.dedent(
        f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-m", "bridge_devstack.keepalive", "--name",
                              "child", "--", sys.executable, {str(child)!r}])
        open({str(pids)!r}, "w").write(str(p.pid))
        while True:
            time.sleep(0.1)
        """
    ))  # fmt: skip
    sup = subprocess.Popen([sys.executable, str(supervisor)])
    try:
        wait_for(lambda: pids.exists() and pids.read_text().strip(), timeout=10)
        wrapper = psutil.Process(int(pids.read_text()))
        wait_for(lambda: wrapper.children(), timeout=10)
        service = wrapper.children()[0]
        sup.kill()
        sup.wait(5)
        gone, alive = psutil.wait_procs([wrapper, service], timeout=15)
        assert not alive, f"left running: {alive}"
    finally:
        if sup.poll() is None:
            sup.kill()
