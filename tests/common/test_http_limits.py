"""Request-head limits on every HTTP port (bridge_common.http_guard), over real sockets:
oversized and never-ending headers are answered 431, slow or silent connections are closed
after the header timeout, pending connections are bounded per address, and memory stays
flat while it happens."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import websockets

from tests.support.processes import ServiceProcess

LIMITS = {
    "BRIDGE_HTTP_MAX_HEADER_BYTES": "8192",
    "BRIDGE_HTTP_HEADER_TIMEOUT": "1.5",
    "BRIDGE_HTTP_MAX_PENDING_PER_IP": "16",
    "BRIDGE_HTTP_MAX_PENDING": "64",
}


@pytest.fixture(scope="module")
def services(
    migrated_dsn: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    env = {
        "BRIDGE_SOURCE_DSN": migrated_dsn,
        "BRIDGE_TARGET_DSN": migrated_dsn,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_AUTH": "disabled",
        "BRIDGE_METRICS_AUTH": "disabled",
        "BRIDGE_HEARTBEAT_INTERVAL": "1",
        **LIMITS,
    }
    logs = Path(tmp_path_factory.mktemp("http"))
    procs = {name: ServiceProcess(name, env, logs).start() for name in ("gateway", "metrics_api")}
    procs["notifier"] = ServiceProcess("notifier", env, logs).start()
    yield procs
    for p in procs.values():
        assert p.stop() == 0, p.logs()[-4000:]


def _open(proc: ServiceProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    return s


def _read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _send_quietly(s: socket.socket, data: bytes) -> None:
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed first: what it answered is still readable


@pytest.mark.parametrize("name", ["gateway", "metrics_api", "notifier"])
def test_header_without_end_is_refused_431(services, name) -> None:
    proc = services[name]
    s = _open(proc)
    _send_quietly(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 200_000)
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


@pytest.mark.parametrize("name", ["gateway", "metrics_api", "notifier"])
def test_normal_requests_and_keep_alive_still_work(services, name) -> None:
    with httpx.Client(base_url=services[name].url) as c:
        for _ in range(3):  # one connection, several requests
            assert c.get("/healthz", headers={"X-Pad": "p" * 4000}).status_code == 200


def test_complete_huge_authorization_header_cannot_open_a_stream(services) -> None:
    proc = services["gateway"]
    s = _open(proc)
    _send_quietly(
        s,
        b"GET /events/intents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + b"x" * 1_000_000
        + b"\r\n\r\n",
    )
    answer = _read_all(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]


async def test_websocket_upgrade_is_unaffected(services) -> None:
    url = services["gateway"].url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(url) as ws:
        await ws.send('{"type":"ping"}')
        assert "pong" in str(await ws.recv())


@pytest.mark.parametrize("name", ["gateway", "notifier"])
def test_slow_header_and_silent_connection_time_out(services, name) -> None:
    proc = services[name]
    silent = _open(proc)
    slow = _open(proc)
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    slow.settimeout(0.3)
    answer = b""
    # one header line every 0.3 s: the deadline is for the whole head, not per line
    while time.monotonic() - started < 20:
        try:
            slow.sendall(b"X-Drip: 1\r\n")
            chunk = slow.recv(4096)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if not chunk:
            break
        answer += chunk
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert _read_all(silent) == b""  # closed without a word
    silent.close()


def test_pending_connections_are_bounded_per_address(services) -> None:
    proc = services["gateway"]
    held = [_open(proc) for _ in range(16)]

    def refused_now() -> bool:
        s = _open(proc)
        answer = _read_all(s, timeout=5)
        s.close()
        return answer.startswith(b"HTTP/1.1 503")

    # the 17th silent connection from this address is answered 503 at once
    deadline = time.monotonic() + 10
    while not refused_now():
        assert time.monotonic() < deadline, "pending bound never applied"
    # once the held ones time out, requests are served again
    for s in held:
        assert _read_all(s) == b""
        s.close()
    assert httpx.get(proc.url + "/healthz").status_code == 200
    assert "bridge_http_refused_total" in httpx.get(proc.url + "/metrics").text


def test_memory_stays_bounded_under_header_floods(services) -> None:
    proc = services["gateway"]
    assert proc.proc is not None
    rss = psutil.Process(proc.proc.pid).memory_info().rss
    chunk = b"X-Junk: " + b"j" * 65536
    for _ in range(5):
        socks = [_open(proc) for _ in range(10)]
        for s in socks:
            _send_quietly(s, b"GET / HTTP/1.1\r\n")
            for _ in range(8):  # 512 KiB each, never finished
                _send_quietly(s, chunk)
        for s in socks:
            assert _read_all(s).startswith(b"HTTP/1.1 431")
            s.close()
    grown = psutil.Process(proc.proc.pid).memory_info().rss - rss
    assert grown < 20 * 1024 * 1024, f"gateway RSS grew by {grown} bytes"
    assert httpx.get(proc.url + "/healthz").status_code == 200
