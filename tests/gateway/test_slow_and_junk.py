"""Hostile and slow clients: a reader that stops reading is cut off (close 1013) while the
others keep receiving everything; hypothesis-generated junk frames never crash the process."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import connect, metric, recv_json, subscribe, token, ws_url
from tests.support.processes import ServiceProcess


@pytest.fixture(scope="module")
def tight_gateway(gw_env, tmp_path_factory) -> Iterator[ServiceProcess]:
    """A gateway with a small outgoing buffer and a generous message rate."""
    env = {
        **gw_env,
        "BRIDGE_GATEWAY_SEND_BUFFER_MESSAGES": "64",
        "BRIDGE_GATEWAY_SEND_BUFFER_BYTES": "262144",
        "BRIDGE_GATEWAY_SLOW_READER_GRACE": "0.3",
        "BRIDGE_GATEWAY_SEND_BUFFER_MAX_BYTES": "1048576",
        "BRIDGE_GATEWAY_RATE_LIMIT": "100000",
        "BRIDGE_GATEWAY_RATE_BURST": "100000",
    }
    proc = ServiceProcess("gateway", env, Path(tmp_path_factory.mktemp("tight")))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.logs()[-4000:]


async def test_slow_reader_is_cut_while_others_keep_flowing(tight_gateway, inject) -> None:
    proc = tight_gateway
    tok = token(["things"])
    # a reader with a tiny socket buffer that stops reading after subscribing
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proc.port))
    slow = await websockets.connect(
        ws_url(proc),
        sock=sock,
        additional_headers={"Authorization": f"Bearer {tok}"},
        max_queue=1,
        max_size=None,
    )
    await subscribe(slow, "things")
    fast = [await connect(proc, tok=tok) for _ in range(3)]
    for ws in fast:
        await subscribe(ws, "things")
    dropped_before = metric(proc, "bridge_gateway_slow_clients_dropped_total")

    total = 600
    blob = "x" * 8000
    published: list[str] = []
    received: dict[int, list[str]] = {i: [] for i in range(len(fast))}

    async def read(i: int, ws) -> None:
        while len(received[i]) < total:
            received[i].append((await recv_json(ws, 20))["id"])

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(fast)]
    for start in range(0, total, 20):
        published += await inject.rows(
            "things", [{"id": start + i, "blob": blob} for i in range(20)]
        )
        await asyncio.sleep(0.005)
    await asyncio.wait_for(asyncio.gather(*readers), 30)
    for i in received:
        assert received[i] == published  # the others got everything, in order
    # the slow reader is cut once its backlog has stayed over the bound for the grace time
    deadline = asyncio.get_running_loop().time() + 10
    while metric(proc, "bridge_gateway_slow_clients_dropped_total") < dropped_before + 1:
        assert asyncio.get_running_loop().time() < deadline, "slow reader never cut"
        await asyncio.sleep(0.05)
    # the slow reader now reads: what was already in flight, then the close frame
    got = 0
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(slow.recv(), 10)
            got += 1
    assert got < total
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (
        1013,
        "slow reader: outgoing buffer full",
    )
    for ws in fast:
        await ws.close()


frames = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
    st.builds(
        json.dumps,
        st.dictionaries(
            st.sampled_from(["type", "topic", "filter", "since", "x"]),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers()
                | st.floats(allow_nan=True)
                | st.text(max_size=20)
                | st.sampled_from(
                    ["subscribe", "unsubscribe", "ping", "intents", "things", "0-0", "1-1"]
                ),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4)
                ),
                max_leaves=12,
            ),
            max_size=5,
        ),
    ),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(frames, min_size=1, max_size=15))
def test_junk_frames_never_crash(tight_gateway, inject_sync, batch) -> None:
    async def go() -> None:
        async with await connect(tight_gateway, tok=token(["*"])) as ws:
            for frame in batch:
                await ws.send(frame)
            await ws.send('{"type":"ping"}')
            while True:  # every junk frame is answered; the connection stays up
                msg = await recv_json(ws, 10)
                if msg["type"] == "pong":
                    break
                assert msg["type"] in ("error", "subscribed", "event"), msg

    asyncio.run(go())
    assert tight_gateway.alive()


@pytest.fixture(scope="module")
def inject_sync(redis_url, namespace) -> None:
    import redis as redis_sync
    from bridge_common.channels import Channels

    client = redis_sync.Redis.from_url(redis_url)
    client.sadd(Channels(namespace).topics, "intents", "things")
    client.close()


async def test_slow_sse_reader_is_cut(tight_gateway, inject) -> None:
    """An SSE client that stops reading loses its stream; the gateway keeps going."""
    proc = tight_gateway
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proc.port))
    sock.sendall(
        f"GET /events/things?token={token(['things'])} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    dropped = metric(proc, "bridge_gateway_slow_clients_dropped_total")
    blob = "y" * 16000
    # more than the kernel's socket buffers hold (up to a few MiB on loopback)
    for start in range(0, 1000, 20):
        await inject.rows("things", [{"id": start + i, "blob": blob} for i in range(20)])
        if metric(proc, "bridge_gateway_slow_clients_dropped_total") > dropped:
            break
    deadline = asyncio.get_running_loop().time() + 20
    while metric(proc, "bridge_gateway_slow_clients_dropped_total") <= dropped:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    # the stream was ended: reading drains what was in flight, then EOF
    sock.settimeout(10)
    total = 0
    while chunk := sock.recv(1 << 16):
        total += len(chunk)
    assert total < 1000 * 16000
    sock.close()
    async with await connect(proc, tok=token(["*"])) as ws:
        await ws.send('{"type":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}
