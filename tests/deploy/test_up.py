"""`just up` end to end: an empty data folder becomes a running suite with embedded
PostgreSQL and Redis, the printed curl shows live events, Ctrl-C leaves nothing behind,
and a second `just up` finds the data again."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from tests.support.infra import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PORT_VARS = (
    "BRIDGE_NOTIFIER_PORT",
    "BRIDGE_GATEWAY_PORT",
    "BRIDGE_ETL_PORT",
    "BRIDGE_METRICS_API_PORT",
    "BRIDGE_ALERTER_PORT",
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("just") is None, reason="just is not installed"),
]


@dataclass
class Up:
    """A running `just up` in its own session, as a terminal would run it."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.strip().startswith(prefix):
                    return line.strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no line starting {prefix!r}; output:\n{self.output()[-6000:]}")

    def ctrl_c(self, timeout: float = 40.0) -> int:
        """SIGINT to the foreground process group, as the terminal sends it."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


def start_up(env: dict[str, str], data_dir: Path, *extra: str) -> Up:
    argv = ["just", "up", "--data-dir", str(data_dir), "--postgres", "embedded",
            "--redis", "embedded", "--demo-rate", "5", *extra]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return Up(proc)


def stop_quietly(up: Up, data_dir: Path) -> None:
    """After a failure: nothing of this test may outlive it (the databases run in their
    own sessions, so the process group does not cover them)."""
    if up.proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(up.proc.pid, signal.SIGKILL)
        up.proc.wait(10)
    for proc in processes_using(data_dir):
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    up.reader.join(10)
    if up.proc.stdout is not None:
        up.proc.stdout.close()


def processes_using(folder: Path) -> list[psutil.Process]:
    """Live processes whose command line names the data folder (postgres, redis-server)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if str(folder) in cmdline and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """Not under pytest's temporary root: that one is mode 0700 and every pytest session
    starting meanwhile resets it, so the embedded PostgreSQL's own user (as root) could not
    reach its data. Short, too: the server's Unix socket lives inside it."""
    parent = Path(tempfile.mkdtemp(prefix="bridge-up-"))
    yield parent / "data"
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def up_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    for var in ("POSTGRES_DSN", "DATABASE_URL"):
        env.pop(var, None)
    env.update({var: str(free_port()) for var in SERVICE_PORT_VARS})
    # where the private Redis should listen (nothing answers there yet)
    env["BRIDGE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    env["BRIDGE_LOG_LEVEL"] = "warning"
    return env


def service_url(env: dict[str, str], var: str) -> str:
    return f"http://127.0.0.1:{env[var]}"


def read_stack_env(data_dir: Path) -> dict[str, str]:
    out = {}
    for line in (data_dir / "stack.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def intents_count(dsn: str) -> int:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM intents").fetchone()
    assert row is not None
    return int(row[0])


def run_printed_curl(line: str) -> str:
    argv = shlex.split(line)
    assert argv[:2] == ["curl", "-N"], line
    # the command as printed, bounded in time so the test can read what it showed
    result = subprocess.run(
        [*argv, "--silent", "--max-time", "8"], capture_output=True, text=True, check=False
    )
    assert result.returncode in (0, 28), result.stderr  # 28: our --max-time ended the stream
    return result.stdout


@pytest.fixture(scope="module")
def first_run(data_dir: Path, up_env: dict[str, str]) -> Iterator[dict[str, object]]:
    """`just up` on an empty folder, observed until Ctrl-C; facts for the tests below."""
    assert not data_dir.exists()
    up = start_up(up_env, data_dir)
    facts: dict[str, object] = {}
    try:
        curl = up.wait_for_line("curl -N", timeout=90)
        facts["curl"] = curl
        facts["banner"] = up.output()
        facts["ready"] = {
            var: httpx.get(service_url(up_env, var) + "/readyz", timeout=5).status_code
            for var in SERVICE_PORT_VARS
        }
        api = service_url(up_env, "BRIDGE_METRICS_API_PORT")
        facts["dashboard_anonymous"] = httpx.get(api + "/", timeout=5).status_code
        # the printed login link, opened as a browser would: session cookie, then the page
        link = next(w for w in up.output().split() if "/login?token=" in w)
        facts["link"] = link
        with httpx.Client(timeout=5, follow_redirects=True) as browser:
            dashboard = browser.get(link, headers={"Accept": "text/html"})
            facts["dashboard"] = (dashboard.status_code, dashboard.headers.get("content-type", ""))
            facts["gateway_token"] = browser.get(api + "/api/v1/gateway-token").status_code
        facts["sse"] = run_printed_curl(curl)
        facts["tree"] = [p.pid for p in up.tree()]
        pg_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        facts["postgres_pid"] = pg_pid
        facts["data_processes"] = [p.pid for p in processes_using(data_dir)]
        dsn = read_stack_env(data_dir)["BRIDGE_SOURCE_DSN"]
        facts["intents"] = intents_count(dsn)
        facts["secret"] = (data_dir / "jwt-secret").read_text()
        facts["exit_code"] = up.ctrl_c()
        facts["after"] = up.output()
        yield facts
    finally:
        stop_quietly(up, data_dir)


def test_empty_folder_becomes_ready(first_run: dict[str, object]) -> None:
    assert first_run["ready"] == dict.fromkeys(SERVICE_PORT_VARS, 200)
    banner = str(first_run["banner"])
    for what in ("dashboard", "WebSocket", "SSE", "demo JWT"):
        assert what in banner
    status, content_type = first_run["dashboard"]  # type: ignore[misc]
    assert status == 200 and content_type.startswith("text/html")
    # the dashboard wants a login; the banner's link is one (and gets the page its token)
    assert first_run["dashboard_anonymous"] == 401
    assert str(first_run["link"]).startswith("http://127.0.0.1:")
    assert first_run["gateway_token"] == 200


def test_printed_curl_shows_live_events(first_run: dict[str, object]) -> None:
    frames = [
        json.loads(line.removeprefix("data:").strip())
        for line in str(first_run["sse"]).splitlines()
        if line.startswith("data:")
    ]
    events = [f for f in frames if f["type"] == "event"]
    assert events, f"no events in: {str(first_run['sse'])[:2000]}"
    assert {f["topic"] for f in events} == {"intents"}
    assert {f["op"] for f in events} <= {"insert", "update", "delete"}
    assert all(f["data"]["title"] and f["data"]["status"] for f in events)
    assert "event: intents" in str(first_run["sse"])


def test_ctrl_c_leaves_no_process_behind(first_run: dict[str, object], data_dir: Path) -> None:
    # just reports a Ctrl-C during a recipe as 130 ("interrupted by SIGINT"), like a shell
    assert first_run["exit_code"] in (0, 130), str(first_run["after"])[-3000:]
    assert "bridge-up: stopped" in str(first_run["after"])
    tree = list(first_run["tree"])  # type: ignore[call-overload]
    assert len(tree) >= 7  # uv, bridge-up, 6 wrappers and their children at least
    every = {*tree, first_run["postgres_pid"], *first_run["data_processes"]}  # type: ignore[misc]
    survivors = []
    for pid in every:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                survivors.append(f"{pid} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    assert survivors == []
    assert processes_using(data_dir) == []
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert "Traceback" not in str(first_run["after"])


def test_second_up_reuses_the_data(
    first_run: dict[str, object], data_dir: Path, up_env: dict[str, str]
) -> None:
    assert int(first_run["intents"]) > 0  # type: ignore[call-overload]
    up = start_up(up_env, data_dir, "--no-demo")
    try:
        up.wait_for_line("curl -N", timeout=90)
        dsn = read_stack_env(data_dir)["BRIDGE_SOURCE_DSN"]
        assert intents_count(dsn) >= int(first_run["intents"])  # type: ignore[call-overload]
        assert (data_dir / "jwt-secret").read_text() == first_run["secret"]
        assert up.ctrl_c() in (0, 130)
    finally:
        stop_quietly(up, data_dir)
    assert processes_using(data_dir) == []


def test_port_in_use_is_one_clear_line(up_env: dict[str, str], tmp_path: Path) -> None:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**up_env, "BRIDGE_GATEWAY_PORT": str(port)}
        result = subprocess.run(
            ["just", "up", "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    message = [line for line in result.stderr.splitlines() if line.startswith("bridge-up:")]
    assert len(message) == 1, result.stderr
    assert f"port {port}" in message[0] and "BRIDGE_GATEWAY_PORT" in message[0]
    assert "in use" in message[0]
