"""The hostile-input probe's classes replayed against a running suite (notifier + gateway
over a real database and Redis) while ordinary clients keep working (issue #22):

- TRUNCATE of a watched table reaches SDK subscribers over WebSocket and SSE as one
  `truncate` event, filters notwithstanding (#23 item 10);
- a sweep of generated hostile input — unfinished, oversized and slow request heads,
  silent sockets, junk WebSocket frames, hostile SSE queries and tokens, a 5 MB row —
  runs while a WebSocket and an SSE client receive every event written meanwhile, once
  and in order, and the gateway's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import psutil
import psycopg
import pytest
from bridge_client import BridgeClient, Event, parse_event_id
from bridge_common import migrate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.support.processes import ServiceProcess
from tests.support.suite import JWT_SECRET, make_token

pytestmark = pytest.mark.e2e

TOPIC = "sweep_items"
SWEEP = settings(
    max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.fixture(scope="module")
def suite(
    migrated_dsn: str, redis_url: str, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServiceProcess]]:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TOPIC} (id int PRIMARY KEY, grp text NOT NULL, v text)")
    asyncio.run(migrate.watch(migrated_dsn, TOPIC))
    env = {
        "BRIDGE_SOURCE_DSN": migrated_dsn,
        "BRIDGE_TARGET_DSN": migrated_dsn,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_HEARTBEAT_INTERVAL": "1",
        "BRIDGE_JWT_SECRET": JWT_SECRET,
        "BRIDGE_AUTH": "jwt",
        "BRIDGE_HTTP_HEADER_TIMEOUT": "2",
        "BRIDGE_HTTP_MAX_PENDING_PER_IP": "200",
    }
    logs = Path(tmp_path_factory.mktemp("sweep"))
    procs = {
        "notifier": ServiceProcess("notifier", env, logs).start(timeout=40),
        "gateway": ServiceProcess("gateway", env, logs).start(timeout=40),
    }
    yield procs
    for proc in procs.values():
        assert proc.alive(), proc.logs()[-3000:]
        assert proc.stop() == 0, proc.logs()[-3000:]


async def _collect(sub: object, until: int, out: list[Event], timeout: float = 60) -> None:
    """Read events until `until` rows (or a truncate) have arrived."""

    async def go() -> None:
        async for event in sub:  # type: ignore[attr-defined]
            out.append(event)
            if len(out) >= until:
                return

    await asyncio.wait_for(go(), timeout)


async def _write(dsn: str, sql: str, *params: object) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.encode(), params)


async def test_truncate_reaches_ws_and_sse_subscribers(suite, migrated_dsn) -> None:
    url = suite["gateway"].url
    tok = make_token([TOPIC])
    await _write(migrated_dsn, f"DELETE FROM {TOPIC}")
    async with (
        BridgeClient(url, token=tok, transport="websocket") as ws_client,
        BridgeClient(url, token=tok, transport="sse") as sse_client,
    ):
        subs = [
            ws_client.subscribe(TOPIC, filter={"grp": "a"}),
            sse_client.subscribe(TOPIC, filter={"grp": "a"}),
        ]
        got: list[list[Event]] = [[], []]
        readers = [asyncio.create_task(_collect(s, 3, g)) for s, g in zip(subs, got, strict=True)]
        await asyncio.sleep(0)
        # let both subscriptions go live before writing (they resume from their start)
        await _write(
            migrated_dsn,
            f"INSERT INTO {TOPIC} VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'a', 'z')",
        )
        await _write(migrated_dsn, f"TRUNCATE {TOPIC}")
        await asyncio.gather(*readers)
    for events in got:
        assert [(e.op, e.key) for e in events] == [
            ("insert", "1"),
            ("insert", "3"),
            ("truncate", ""),
        ]
        assert events[-1].data == {} and events[-1].topic == TOPIC
        assert parse_event_id(events[0].id) < parse_event_id(events[-1].id)


# -- the sweep --------------------------------------------------------------------------------


def _raw(port: int, payload: bytes, *, timeout: float = 10.0) -> bytes:
    """Send `payload` on a fresh socket; return what the server answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
        except OSError:
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if len(out) > 1 << 20:
                    break
        except OSError:
            pass
        return out


heads = st.one_of(
    # an unfinished head, of any size up to 256 kB
    st.binary(max_size=2048).map(lambda b: b"GET / HTTP/1.1\r\nX-J: " + b * 128),
    # a complete head with one giant header
    st.integers(16_000, 300_000).map(
        lambda n: b"GET /events/x HTTP/1.1\r\nAuthorization: Bearer " + b"a" * n + b"\r\n\r\n"
    ),
    # junk that is not HTTP at all
    st.binary(min_size=1, max_size=4096),
    # a request line with control characters
    st.text(max_size=64).map(lambda t: f"GET /{t} HTTP/1.1\r\n\r\n".encode("utf-8", "replace")),
)

ws_frames = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=64).map(lambda b: b'{"type":"subscribe","topic":"' + b + b'"}'),
    st.integers(100, 20_000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(["intents\n", "x\r", "\u0661", " t", "a" * 70]).map(
        lambda t: json.dumps({"type": "subscribe", "topic": t})
    ),
    st.sampled_from(["1-0\n", "\u0661-0", "18446744073709551616-0", "-1", "1-"]).map(
        lambda s: json.dumps({"type": "subscribe", "topic": TOPIC, "since": s})
    ),
)

sse_queries = st.dictionaries(
    st.sampled_from(["last_event_id", "close_after", "grp", "token", "x\n"]),
    st.text(max_size=40),
    max_size=3,
)


def _sweep(port: int, base: str, stop_flag: threading.Event) -> dict[str, int]:
    """Every hostile class, bounded; returns how many probes of each ran."""
    counts = {"heads": 0, "frames": 0, "sse": 0, "slow": 0, "silent": 0, "tokens": 0}
    ws_base = base.replace("http://", "ws://")
    tok = make_token(["*"])

    @SWEEP
    @given(payload=heads)
    def head(payload: bytes) -> None:
        counts["heads"] += 1
        answer = _raw(port, payload)
        # refused with a 4xx or just closed; never a 5xx, never held open
        assert not answer.startswith(b"HTTP/1.1 5"), answer[:100]

    @SWEEP
    @given(frames=st.lists(ws_frames, min_size=1, max_size=4))
    def frames(frames: list[str | bytes]) -> None:
        counts["frames"] += 1
        try:
            with ws_connect(
                f"{ws_base}/ws", additional_headers={"Authorization": f"Bearer {tok}"}
            ) as ws:
                for frame in frames:
                    ws.send(frame)
                ws.send('{"type":"ping"}')
                while True:
                    msg = json.loads(ws.recv(timeout=10))
                    if msg["type"] == "pong":
                        break
                    assert msg["type"] in ("error", "subscribed", "event"), msg
                    if msg["type"] == "error":
                        assert msg["code"] != "internal", msg
        except ConnectionClosed as exc:
            # a deliberate cut (oversize, flood, 1007), never 1011 internal error
            assert exc.rcvd is not None and exc.rcvd.code != 1011, exc

    @SWEEP
    @given(query=sse_queries)
    def sse(query: dict[str, str]) -> None:
        counts["sse"] += 1
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
        try:
            with httpx.stream(
                "GET",
                f"{base}/events/{TOPIC}?{qs}&close_after=1",
                headers={"Authorization": f"Bearer {tok}"},
                timeout=5,
            ) as r:
                assert r.status_code < 500, (query, r.status_code)
        except httpx.ReadTimeout:
            pass  # a valid stream that waits for its one event

    head()
    frames()
    sse()
    # slow heads and silent sockets: closed by the header timeout (2 s here)
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    deadline = time.monotonic() + 20
    for s in slow:
        s.sendall(b"GET / HTTP/1.1\r\n")
        s.settimeout(0.2)
    open_slow = set(range(len(slow)))
    while open_slow and time.monotonic() < deadline:
        for i in list(open_slow):
            try:
                slow[i].sendall(b"X-Drip: 1\r\n")
                if slow[i].recv(4096) == b"":
                    open_slow.discard(i)
                else:
                    open_slow.discard(i)  # answered (408) and closed
            except TimeoutError:
                continue
            except OSError:
                open_slow.discard(i)
    assert not open_slow, f"{len(open_slow)} slow connections outlived the header timeout"
    counts["slow"] = len(slow)
    for s in silent:
        s.settimeout(10)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
    counts["silent"] = len(silent)
    for s in slow + silent:
        s.close()
    # tokens whose exp is a string, unbounded or too far ahead
    for exp in ("9999999999", 1e308, 10**20, int(time.time()) + 30 * 86400):
        bad = jwt.encode({"sub": "m", "exp": exp, "topics": ["*"]}, JWT_SECRET, "HS256")
        try:
            with ws_connect(f"{ws_base}/ws?token={bad}", open_timeout=5):
                raise AssertionError(f"token with exp={exp!r} accepted")
        except (InvalidStatus, InvalidMessage) as exc:
            assert isinstance(exc, InvalidStatus) and exc.response.status_code == 401
        counts["tokens"] += 1
    stop_flag.set()
    return counts


async def test_hostile_sweep_keeps_clients_flowing_and_memory_bounded(suite, migrated_dsn) -> None:
    gateway = suite["gateway"]
    assert gateway.proc is not None
    url = gateway.url
    tok = make_token([TOPIC])
    await _write(migrated_dsn, f"DELETE FROM {TOPIC}")
    done = threading.Event()
    written: list[str] = []

    async def writer() -> None:
        n = 1000
        async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
            while not done.is_set() and n < 1000 + 2000:
                n += 1
                v = "B" * (5 * 1024 * 1024) if n == 1050 else "v"
                await conn.execute(f"INSERT INTO {TOPIC} VALUES (%s, 'a', %s)".encode(), (n, v))
                written.append(str(n))
                await asyncio.sleep(0.02)

    async with (
        BridgeClient(url, token=tok, transport="websocket") as ws_client,
        BridgeClient(url, token=tok, transport="sse") as sse_client,
    ):
        subs = [ws_client.subscribe(TOPIC), sse_client.subscribe(TOPIC)]
        got: list[list[Event]] = [[], []]
        readers = [
            asyncio.create_task(_collect(s, 10**9, g, timeout=600))
            for s, g in zip(subs, got, strict=True)
        ]
        # both live: a first row reaches both
        await _write(migrated_dsn, f"INSERT INTO {TOPIC} VALUES (1000, 'a', 'first')")
        written.append("1000")
        deadline = time.monotonic() + 60
        while not all(got):
            assert time.monotonic() < deadline, "clients never went live"
            await asyncio.sleep(0.05)
        rss_before = psutil.Process(gateway.proc.pid).memory_info().rss
        write_task = asyncio.create_task(writer())
        counts = await asyncio.to_thread(_sweep, gateway.port, url, done)
        await write_task
        deadline = time.monotonic() + 60
        while any(len(g) < len(written) for g in got):
            assert time.monotonic() < deadline, [len(g) for g in got]
            await asyncio.sleep(0.05)
        for r in readers:
            r.cancel()
        rss_after = psutil.Process(gateway.proc.pid).memory_info().rss
    assert all(v > 0 for v in counts.values()), counts
    for events in got:
        # every row written during the sweep, once, in order, the 5 MB one whole
        assert [e.key for e in events] == written
        big = next(e for e in events if e.key == "1050")
        assert len(big.data["v"]) == 5 * 1024 * 1024
    grown = rss_after - rss_before
    assert grown < 96 * 1024 * 1024, f"gateway RSS grew by {grown / 1e6:.0f} MB"
    assert gateway.alive() and suite["notifier"].alive()
    assert httpx.get(url + "/readyz", timeout=5).status_code == 200
