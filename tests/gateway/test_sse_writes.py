"""SSE write path: an idle stream gets each event written at once, a backed-up one coalesces.

The gateway writes SSE frames straight to the connection's transport (no batch timer, no
writer task); `bridge_gateway_sse_writes_total{mode}` says whether a write went out at
once (`immediate`) or joined a backlog still waiting for the socket (`coalesced`). This
module runs its own gateway so the counters move only for its streams.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from tests.gateway.conftest import token
from tests.support.processes import ServiceProcess


def writes(proc: ServiceProcess, mode: str) -> float:
    prefix = f'bridge_gateway_sse_writes_total{{mode="{mode}"}} '
    for line in httpx.get(proc.url + "/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_event_on_idle_stream_is_written_at_once(gateway, inject) -> None:
    """One event on a quiet stream is written by the fan-out itself, not batched."""
    async with (
        httpx.AsyncClient(timeout=15) as http,
        aconnect_sse(
            http, "GET", gateway.url + "/events/things", params={"token": token(["things"])}
        ) as source,
    ):
        frames = source.aiter_sse()
        first = await asyncio.wait_for(anext(frames), 10)
        assert first.event == "subscribed"
        # the stream is idle (heartbeat comments are not event writes)
        immediate, coalesced = writes(gateway, "immediate"), writes(gateway, "coalesced")
        [event_id] = await inject.rows("things", [{"id": "idle-1", "v": 1}])
        got = await asyncio.wait_for(anext(frames), 10)
        assert (got.event, got.id) == ("things", event_id)
        assert json.loads(got.data)["key"] == "idle-1"
    assert writes(gateway, "immediate") == immediate + 1
    assert writes(gateway, "coalesced") == coalesced


class _ChunkedSse:
    """Reads SSE frames off a raw socket carrying a chunked HTTP/1.1 response."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = b""  # bytes off the socket not yet de-chunked
        self.body = b""  # de-chunked body not yet split into frames
        while b"\r\n\r\n" not in self.raw:
            self._more()
        self.head, self.raw = self.raw.split(b"\r\n\r\n", 1)

    def _more(self) -> None:
        data = self.sock.recv(1 << 16)
        assert data, "the stream ended"
        self.raw += data

    def _chunk(self) -> None:
        while b"\r\n" not in self.raw:
            self._more()
        size_line, rest = self.raw.split(b"\r\n", 1)
        size = int(size_line, 16)
        assert size > 0, "the stream ended"
        while len(rest) < size + 2:
            self._more()
            rest = self.raw.split(b"\r\n", 1)[1]
        self.body += rest[:size]
        self.raw = rest[size + 2 :]

    def frame(self) -> dict[str, str]:
        """The fields of the next frame (comments only: an empty dict)."""
        while b"\n\n" not in self.body:
            self._chunk()
        frame, self.body = self.body.split(b"\n\n", 1)
        return dict(line.split(": ", 1) for line in frame.decode().split("\n") if ": " in line)

    def events(self, topic: str, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            fields = self.frame()
            if fields.get("event") == topic:
                out.append({"id": fields["id"], "data": json.loads(fields["data"])})
        return out


async def test_backed_up_stream_coalesces_and_loses_nothing(gateway, inject) -> None:
    """A reader that pauses gets later events appended to its backlog, then all of them
    in order once it reads again (within the slow-reader bounds, so it is not cut)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    sock.settimeout(15)
    sock.sendall(
        f"GET /events/things?token={token(['things'])} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    stream = _ChunkedSse(sock)
    assert stream.head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in stream.head.lower()
    while stream.frame().get("event") != "subscribed":
        pass
    before = writes(gateway, "coalesced")
    blob = "z" * 8000
    published: list[str] = []
    # well below SEND_BUFFER_BYTES (4 MiB): a paused reader, not a slow one
    for start in range(0, 400, 20):
        published += await inject.rows(
            "things", [{"id": f"b{start + i}", "blob": blob} for i in range(20)]
        )
        if writes(gateway, "coalesced") > before:
            break
    assert writes(gateway, "coalesced") > before, "the backlog never held a write back"
    got = await asyncio.to_thread(stream.events, "things", len(published))
    sock.close()
    assert [e["id"] for e in got] == published
    assert all(e["data"]["data"]["blob"] == blob for e in got)
