"""Limits on the part of an HTTP request no application sees: the request head.

uvicorn's httptools protocol buffers a request line and headers of any size for as long
as the client likes (its keep-alive timer only runs *between* requests), so one socket can
pin megabytes for ever and a few thousand silent sockets exhaust descriptors. Every port a
Bridge service listens on (gateway, metrics API, health ports) uses this protocol instead:

* the request head (request line + headers) is capped at `max_header_bytes`: a longer one
  is answered `431` and the connection closed, before the parser buffers it;
* the head must arrive within `header_timeout` seconds of the connection opening (or of
  its first byte on a kept-alive connection): otherwise `408` and close — this is also the
  idle limit of a connection that never sends anything, WebSocket upgrades included;
* at most `max_pending` connections, and `max_pending_per_ip` from one address, may be
  waiting for their head at once; one over that is answered `503` and closed at once.

Once the head is complete the request belongs to the application (SSE streams and
WebSockets live on with their own limits).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .logging import get_logger

log = get_logger(__name__)

REFUSED = Counter(
    "bridge_http_refused_total",
    "HTTP connections refused or closed before their request head was complete",
    ["reason"],
)

_ENDS = (b"\r\n\r\n", b"\n\n")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 16 * 1024
    header_timeout: float = 10.0
    max_pending: int = 4096
    max_pending_per_ip: int = 1024


@dataclass(slots=True)
class PendingConnections:
    """Connections of one server still waiting for a request head, in total and per IP."""

    limits: HttpLimits
    total: int = 0
    by_ip: dict[str, int] = field(default_factory=dict)

    def acquire(self, ip: str) -> bool:
        n = self.by_ip.get(ip, 0)
        if self.total >= self.limits.max_pending or n >= self.limits.max_pending_per_ip:
            return False
        self.total += 1
        self.by_ip[ip] = n + 1
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        n = self.by_ip.get(ip, 0) - 1
        if n > 0:
            self.by_ip[ip] = n
        else:
            self.by_ip.pop(ip, None)


def _answer(status: bytes, message: bytes) -> bytes:
    return b"".join(
        [
            b"HTTP/1.1 ",
            status,
            b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ",
            str(len(message)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            message,
        ]
    )


TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b"request header too large")
TIMED_OUT = _answer(b"408 Request Timeout", b"request header not received in time")
BUSY = _answer(b"503 Service Unavailable", b"too many pending connections")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring.

    Build a subclass bound to one server's limits with :func:`guarded_protocol`.
    """

    pending: PendingConnections  # set on the subclass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_head = True
        self._head_bytes = 0
        self._tail = b""
        self._holds_slot = False
        self._ip = ""
        self._head_timer: asyncio.TimerHandle | None = None

    # -- pending slot and head timer ------------------------------------------------------
    def _begin_head(self) -> bool:
        """A request head starts: take a pending slot and arm its deadline."""
        if not self.pending.acquire(self._ip):
            REFUSED.labels("pending").inc()
            self._refuse(BUSY)
            return False
        self._holds_slot = True
        self._head_timer = self.loop.call_later(
            self.pending.limits.header_timeout, self._head_timed_out
        )
        return True

    def _end_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._holds_slot:
            self._holds_slot = False
            self.pending.release(self._ip)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        REFUSED.labels("header_timeout").inc()
        self._refuse(TIMED_OUT if self._head_bytes else b"")

    def _refuse(self, answer: bytes) -> None:
        self._end_head()
        self._awaiting_head = False
        if answer:
            self.transport.write(answer)
        self.transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._ip = self.client[0] if self.client else ""
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._awaiting_head:
            if (
                self._head_timer is None
                and not self._holds_slot
                and (self.cycle is None or self.cycle.response_complete)
                and not self._begin_head()
            ):
                return  # a kept-alive connection starting its next request
            if not self._count_head(data):
                REFUSED.labels("header_too_large").inc()
                self._refuse(TOO_LARGE)
                return
        super().data_received(data)

    def _count_head(self, data: bytes) -> bool:
        """Add the head bytes in `data` to the count; False when over the cap."""
        limit = self.pending.limits.max_header_bytes
        room = limit - self._head_bytes
        window = self._tail + data[: room + 4]
        ends = [i + len(m) for m in _ENDS if (i := window.find(m)) >= 0]
        if ends:
            used = max(min(ends) - len(self._tail), 0)
        else:
            used = len(data)
            self._tail = window[-3:]
        self._head_bytes += used
        return self._head_bytes <= limit

    # -- parser callbacks -----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._tail = b""
        self._end_head()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if not self.parser.should_upgrade():
            # a kept-alive connection: its next head is counted and timed from its first byte
            self._awaiting_head = True
            self._head_bytes = 0


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for one server: its connections share one pending count."""
    return type(
        "BridgeHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"pending": PendingConnections(limits)},
    )
