"""Write-through for SSE responses: what the ASGI interface lacks for a fan-out.

ASGI sends a response body with `await send(...)`, so a stream needs a task that wakes up
for every event — a thousand subscribers cost a thousand task switches per event, which
is what made SSE slower than WebSocket. The gateway's HTTP protocol adds an extension to
each GET request's scope (`bridge.stream`) with which the fan-out writes an already
framed chunk straight to the connection's transport, as WebSocket connections do
(`ws_protocol.py`):

* **idle, the write is immediate**: the transport hands it to the socket in the same
  loop iteration, no batch timer;
* **under load, writes coalesce**: while the transport still holds bytes for the peer
  (a socket that has not drained, or writes earlier in the same loop iteration), a new
  chunk is appended to that backlog and everything goes out in one write when the socket
  drains. `bridge_gateway_sse_writes_total{mode}` counts both.

The backlog is the bounded outgoing buffer of the connection: `clients.Client` measures
it after every write and cuts a slow reader (time and size bounds, as for WebSocket).
"""

from __future__ import annotations

from typing import Any

from bridge_common.http_guard import GuardedHttpToolsProtocol, HttpLimits, guarded_protocol
from bridge_common.settings import BridgeSettings
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from . import metrics
from .clients import sse_chunk

EXTENSION = "bridge.stream"

_WRITES = metrics.SSE_WRITES


class StreamOut:
    """Direct writes to one streaming response, after the ASGI app sent its head."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle

    @property
    def chunked(self) -> bool:
        """Whether body bytes must be framed as chunks (`clients.sse_chunk`)."""
        return bool(self._cycle.chunked_encoding)

    def _open(self) -> bool:
        cycle = self._cycle
        return (
            cycle.response_started
            and not cycle.response_complete
            and not cycle.disconnected
            and not cycle.transport.is_closing()
        )

    def write(self, data: bytes) -> int:
        """Write framed body bytes; return the bytes the transport now holds (-1: gone)."""
        if not self._open():
            return -1
        transport = self._cycle.transport
        if transport.get_write_buffer_size():
            _WRITES.coalesced += 1
        else:
            _WRITES.immediate += 1
        transport.write(data)
        return int(transport.get_write_buffer_size())

    def comment(self, data: bytes) -> None:
        """Write an SSE comment (heartbeat): not an event, not counted."""
        if self._open():
            self._cycle.transport.write(sse_chunk(data) if self.chunked else data)

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer (0 once closed)."""
        transport = self._cycle.transport
        if transport.is_closing():
            return 0
        return int(transport.get_write_buffer_size())

    async def wait_writable(self) -> None:
        await self._cycle.flow.drain()

    def abort(self) -> None:
        """Drop the connection and what it still holds (a cut slow reader)."""
        # the response is over for uvicorn too: nothing more is written, nothing logged
        self._cycle.disconnected = True
        self._cycle.transport.abort()


class StreamingHttpProtocol(GuardedHttpToolsProtocol):
    """The guarded httptools protocol plus the `bridge.stream` extension on GET requests."""

    def on_headers_complete(self) -> None:
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # a new request (not an upgrade) whose ASGI task has not run yet
        if cycle is not None and cycle is not before and self.scope.get("method") == "GET":
            extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
            extensions[EXTENSION] = StreamOut(cycle)


def http_limits(settings: BridgeSettings) -> HttpLimits:
    """The HTTP limits every service's server applies (`bridge_common.service`)."""
    return HttpLimits(
        max_header_bytes=settings.http_max_header_bytes,
        header_timeout=settings.http_header_timeout,
        max_pending=settings.http_max_pending,
        max_pending_per_ip=settings.http_max_pending_per_ip,
    )


def streaming_protocol(limits: HttpLimits) -> type[StreamingHttpProtocol]:
    """The gateway's HTTP protocol class for one server (its own pending-connection count)."""
    guarded = guarded_protocol(limits)
    return type("GatewayHttpProtocol", (StreamingHttpProtocol,), {"pending": guarded.pending})
