"""One connected client (WebSocket or SSE): its bounded outgoing buffer and how it ends.

The fan-out never awaits a client. Write-through connections (WebSocket with
`ws_protocol.py`, SSE with `streaming.py`) get the already-encoded frame written straight
to their transport, whose buffer is then the outgoing buffer: immediate when the socket
is idle, coalesced into one write while it drains. Other servers' connections get the
frame appended to a buffer that a transport-specific writer task drains. A slow reader
is *cut* — the buffer is dropped and the connection closed with a code and reason — so it
never holds up anybody else; it reconnects and resumes with its last id.

Slow is measured in time and in events, never by the size of one frame, so a prompt
reader gets a row of any size: a client is slow when its backlog stays above
`max_bytes` for `slow_grace` seconds, when more than `max_messages` events wait for it,
or when the backlog *before* a new frame already exceeds `hard_bytes` (the memory
ceiling of one connection). A frame alone never trips a bound.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from . import metrics
from .auth import Principal
from .errors import GatewayError

Transport = Literal["ws", "sse"]

#: close codes (WebSocket); SSE responses simply end
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013

SLOW_REASON = "slow reader: outgoing buffer full"


@dataclass(frozen=True, slots=True)
class Limits:
    max_messages: int
    max_bytes: int
    max_subscriptions: int
    rate: float
    burst: int
    #: seconds a backlog may stay above `max_bytes` before the client counts as slow
    slow_grace: float = 5.0
    #: a backlog above this before a new frame is cut at once (memory ceiling)
    hard_bytes: int = 64 * 1024 * 1024


class Delivery:
    """One event, encoded once; every transport's frame is built at most once."""

    __slots__ = ("topic", "raw", "event_id", "_text", "_sse", "_sse_chunk", "_frame")

    def __init__(self, topic: str, raw: bytes, event_id: bytes) -> None:
        self.topic = topic
        self.raw = raw
        self.event_id = event_id
        self._text: str | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None
        self._frame: bytes | None = None

    @property
    def ws_frame(self) -> bytes:
        """The complete WebSocket text frame: identical for every client (server frames
        are unmasked and uncompressed), so it is built once and written to all."""
        if self._frame is None:
            self._frame = ws_text_frame(self.raw)
        return self._frame

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.raw.decode()
        return self._text

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = sse_frame(self.raw, event=self.topic, event_id=self.event_id)
        return self._sse

    @property
    def sse_chunk(self) -> bytes:
        """The SSE frame as one HTTP/1.1 chunk, for write-through streams."""
        if self._sse_chunk is None:
            self._sse_chunk = sse_chunk(self.sse)
        return self._sse_chunk


def ws_text_frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455 §5.2) carrying `payload`."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def sse_frame(data: bytes, *, event: str | None = None, event_id: bytes | None = None) -> bytes:
    """One SSE frame; `data` is single-line JSON (msgspec never emits raw newlines)."""
    head = b""
    if event_id is not None:
        head += b"id: " + event_id + b"\n"
    if event is not None:
        head += b"event: " + event.encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def sse_chunk(frame: bytes) -> bytes:
    """`frame` as one HTTP/1.1 chunk of a chunked response body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(frame), frame)


class _NoEvent:
    """Stands in for the wake-up events of write-through clients (nobody waits on them)."""

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    def is_set(self) -> bool:
        return True

    async def wait(self) -> bool:
        return True


_NO_EVENT = _NoEvent()
#: shared by write-through clients: a deque that keeps nothing
_NO_QUEUE: deque[str | bytes] = deque(maxlen=0)


class Client:
    """Connection state shared by the fan-out, the subscriptions and the transport writer."""

    __slots__ = (
        "transport",
        "principal",
        "limits",
        "_queue",
        "_queued_bytes",
        "wakeup",
        "room",
        "close_code",
        "close_reason",
        "flush_before_close",
        "events_left",
        "on_cut",
        "sink",
        "chunked",
        "wait_writable",
        "expiry",
        "backlog",
        "_slow_timer",
        "_tokens",
        "_stamp",
    )

    def __init__(
        self,
        transport: Transport,
        principal: Principal,
        limits: Limits,
        *,
        write_through: bool = False,
    ) -> None:
        self.transport: Transport = transport
        self.principal = principal
        self.limits = limits
        self._queued_bytes = 0
        # write-through clients (see `sink`) need no buffer or events of their own: less
        # memory per idle connection
        self._queue: deque[str | bytes] = _NO_QUEUE if write_through else deque()
        self.wakeup: asyncio.Event | _NoEvent = _NO_EVENT if write_through else asyncio.Event()
        self.room: asyncio.Event | _NoEvent = _NO_EVENT if write_through else asyncio.Event()
        self.room.set()
        self.close_code: int | None = None
        self.close_reason = ""
        self.flush_before_close = False
        #: SSE `close_after`: events still to send before the stream ends
        self.events_left: int | None = None
        #: called synchronously when the client is cut (transport closes right away)
        self.on_cut: Callable[[int, str], None] | None = None
        #: write-through mode (WebSocket): writes a frame to the socket's transport and
        #: returns its buffered bytes (-1 once closed); the transport buffer is then the
        #: bounded outgoing buffer and no writer task is needed
        self.sink: Callable[[bytes], int] | None = None
        #: write-through SSE: the response body is chunked, frames are written as chunks
        self.chunked = False
        self.wait_writable: Callable[[], Awaitable[None]] | None = None
        #: write-through mode: bytes the transport still holds for the peer
        self.backlog: Callable[[], int] | None = None
        self._slow_timer: asyncio.TimerHandle | None = None
        #: closes the connection when the token expires
        self.expiry: asyncio.TimerHandle | None = None
        self._tokens = float(limits.burst)
        self._stamp = asyncio.get_running_loop().time()

    # -- state --------------------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return self.close_code is not None

    # -- outgoing -----------------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        assert self.sink is not None
        buffered = self.sink(frame)
        if buffered < 0:
            return
        if buffered - len(frame) > self.limits.hard_bytes:
            self._cut_slow()
        elif buffered > self.limits.max_bytes:
            self._watch_backlog()

    def _append(self, frame: str | bytes) -> None:
        before = self._queued_bytes
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if len(self._queue) > self.limits.max_messages or before > self.limits.hard_bytes:
            self._cut_slow()
            return
        if self._queued_bytes > self.limits.max_bytes:
            self._watch_backlog()
        if len(self._queue) * 2 > self.limits.max_messages:
            self.room.clear()
        self.wakeup.set()

    def _current_backlog(self) -> int:
        if self.backlog is not None:
            return self.backlog()
        return self._queued_bytes

    def _watch_backlog(self) -> None:
        """The backlog is above `max_bytes`: cut unless it drains within `slow_grace`."""
        if self._slow_timer is None:
            self._slow_timer = asyncio.get_running_loop().call_later(
                self.limits.slow_grace, self._check_backlog
            )

    def _check_backlog(self) -> None:
        self._slow_timer = None
        if self.close_code is None and self._current_backlog() > self.limits.max_bytes:
            self._cut_slow()

    def _cut_slow(self) -> None:
        metrics.SLOW_DROPPED.inc()
        self.cut(TRY_AGAIN_LATER, SLOW_REASON, reason_label="slow")

    def deliver(self, d: Delivery) -> None:
        """Queue one event (live fan-out path: never awaits)."""
        if self.close_code is not None:
            return
        last = False
        if self.events_left is not None:
            if self.events_left <= 0:
                return
            self.events_left -= 1
            last = self.events_left == 0
        if self.sink is None:
            self._append(d.sse if self.transport == "sse" else d.text)
        elif self.transport == "sse":
            self._write(d.sse_chunk if self.chunked else d.sse)
        else:
            self._write(d.ws_frame)
        if last:
            self.close(1000, "close_after reached", flush=True)

    def send_message(self, encoded: bytes, *, sse_event: str | None = None) -> None:
        """Queue a control message (subscribed, pong, error)."""
        if self.close_code is not None:
            return
        if self.sink is not None:
            if self.transport == "sse":
                frame = sse_frame(encoded, event=sse_event)
                self._write(sse_chunk(frame) if self.chunked else frame)
            else:
                self._write(ws_text_frame(encoded))
        elif self.transport == "sse":
            self._append(sse_frame(encoded, event=sse_event))
        else:
            self._append(encoded.decode())

    def send_shared(self, encoded: bytes, frame: bytes) -> None:
        """A control message sent to many clients: `frame` is its WebSocket frame, built
        once by the caller (presence frames: encode once, send many)."""
        if self.close_code is not None:
            return
        if self.sink is not None:
            self._write(frame)
        else:
            self.send_message(encoded)

    def send_error(self, err: GatewayError) -> None:
        from .protocol import encode_error

        self.send_message(encode_error(err.code, err.message, err.topic), sse_event="error")

    async def wait_room(self) -> None:
        """Backpressure for replays: wait until the buffer is at most half full."""
        if self.wait_writable is not None:
            await self.wait_writable()
            return
        while not self.room.is_set() and self.close_code is None:
            await self.room.wait()

    def take(self) -> list[str | bytes]:
        """Everything queued, oldest first (called by the transport writer)."""
        items = list(self._queue)
        self._queue.clear()
        self._queued_bytes = 0
        self.wakeup.clear()
        self.room.set()
        return items

    # -- inbound rate -------------------------------------------------------------------
    def allow_message(self) -> bool:
        """Token bucket: `rate` messages a second with bursts of `burst`."""
        now = asyncio.get_running_loop().time()
        self._tokens = min(
            float(self.limits.burst), self._tokens + (now - self._stamp) * self.limits.rate
        )
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    # -- ending -------------------------------------------------------------------------
    def stop_timers(self) -> None:
        """The connection is over: nothing may fire for it any more."""
        self._stop_watching()
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def _stop_watching(self) -> None:
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        """End the connection after sending what is queued (`flush`), e.g. going away."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.close_reason = reason
        self.flush_before_close = flush
        self.wakeup.set()
        self.room.set()
        if self.sink is not None and self.on_cut is not None:
            # write-through: what was sent is already ahead of the close frame
            self.on_cut(code, reason)

    def cut(self, code: int, reason: str, *, reason_label: str = "policy") -> None:
        """Drop everything queued and close now (slow reader, flood, bad frames)."""
        if self.close_code is not None and not self.flush_before_close:
            return
        metrics.CUT.labels(reason_label).inc()
        self._queue.clear()
        self._queued_bytes = 0
        self.close_code = code
        self.close_reason = reason
        self.flush_before_close = False
        self._stop_watching()
        self.wakeup.set()
        self.room.set()
        if self.on_cut is not None:
            self.on_cut(code, reason)
