"""uvicorn's sans-I/O WebSocket protocol plus what the ASGI interface lacks for a fan-out:

* `write`: one pre-encoded frame straight to the transport (encode once, send many);
* `detach`: after the ASGI handshake, incoming messages go to callbacks and the ASGI task
  ends — an idle connection keeps no task, coroutine stack or receive queue;
* `cut`: close *now* with a code and reason even when the peer has stopped reading.

ASGI `websocket.close` waits until the transport is writable, which a slow reader never
makes it. `cut` writes the close frame past the flow control, tells the application the
connection is over, and aborts the socket if the peer does not answer within a grace
period — so a stuck client costs nothing after it is cut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

#: seconds a cut peer has to answer the close frame before the socket is aborted
CUT_GRACE = 2.0

EXTENSION = "bridge.cut"


class _NoQueue:
    """Replaces the ASGI receive queue once detached: messages go to callbacks instead."""

    def put_nowait(self, item: object) -> None:
        pass

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0


_NO_QUEUE = _NoQueue()

#: websockets' own handshake lines ("connection open", "connection rejected (401 …)")
#: repeat uvicorn's one line per upgrade: keep only its warnings and errors
_HANDSHAKE_LOG = logging.getLogger("bridge_gateway.ws_handshake")
_HANDSHAKE_LOG.setLevel(logging.WARNING)

OnFrame = Callable[[str | bytes], None]
OnGone = Callable[[], None]


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    # class-level defaults: nothing extra per connection until detached
    on_frame: OnFrame | None = None
    on_gone: OnGone | None = None
    detached = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.logger = _HANDSHAKE_LOG

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = cast(dict[str, Any] | None, getattr(self, "scope", None))
        if scope is not None:
            scope.setdefault("extensions", {})[EXTENSION] = {
                "cut": self.cut,
                "write": self.write_frame,
                "wait_writable": self.wait_writable,
                "buffered": self.buffered,
                "detach": self.detach,
            }

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (
            not self.handshake_initiated
            and self.conn.handshake_exc is not None
            and not self.transport.is_closing()
        ):
            # websockets refused the upgrade request itself (request line or headers too
            # long, malformed) and queued its 414/431/400 answer, which uvicorn never
            # sends: send it and close, rather than leave the client waiting
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    # -- detached mode --------------------------------------------------------------------
    def detach(self, on_frame: OnFrame, on_gone: OnGone) -> None:
        """Deliver messages to `on_frame` and the end of the connection to `on_gone`."""
        self.on_frame = on_frame
        self.on_gone = on_gone
        self.detached = True
        while not self.queue.empty():
            message: Any = self.queue.get_nowait()
            if message["type"] == "websocket.receive":
                data = message.get("text")
                on_frame(data if data is not None else message.get("bytes") or b"")
            elif message["type"] == "websocket.disconnect":
                self._gone()
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # free what only the handshake and the ASGI receive path needed
        attrs: dict[str, Any] = vars(self)
        attrs["queue"] = _NO_QUEUE
        attrs["request"] = None
        attrs["response"] = None
        attrs["scope"] = {"type": "websocket", "client": self.client, "server": self.server}

    def _gone(self) -> None:
        on_gone, self.on_gone = self.on_gone, None
        self.on_frame = None
        if on_gone is not None:
            on_gone()

    def send_receive_event_to_app(self) -> None:
        on_frame = self.on_frame
        if on_frame is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return
        if self.curr_msg_data_type == "text":
            try:
                on_frame(data.decode())
            except UnicodeDecodeError:
                self.cut(1007, "invalid UTF-8")
        else:
            on_frame(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._gone()

    async def run_asgi(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except Exception:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
            if self.close_timer is None:
                self.transport.close()
            return
        if not self.handshake_complete:
            if self.initial_response is None:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif self.close_timer is None:
                # a refusal (401, 403, 503) already answered and logged once at info
                self.transport.close()
            return
        if self.detached:
            return  # the connection lives on without the ASGI task
        if self.close_timer is None:
            self.transport.close()

    def write_frame(self, frame: bytes) -> int:
        """Write a complete, pre-encoded frame; return the transport's buffered bytes.

        Frames are whole (never fragmented), so writing past the sans-I/O state machine is
        safe as long as the connection is open; afterwards this is a no-op returning -1.
        """
        if self.close_sent or self.transport.is_closing() or not self.handshake_complete:
            return -1
        self.transport.write(frame)
        return int(self.transport.get_write_buffer_size())

    def buffered(self) -> int:
        """Bytes written but not yet taken by the peer (0 once closed)."""
        if self.transport.is_closing():
            return 0
        return int(self.transport.get_write_buffer_size())

    async def wait_writable(self) -> None:
        await self.writable.wait()

    def cut(self, code: int, reason: str) -> None:
        if self.close_sent or self.transport.is_closing() or not self.handshake_complete:
            return
        try:
            self.conn.send_close(code, reason)
        except InvalidState:
            return
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.close_timer is None:
            self.close_timer = self.loop.call_later(CUT_GRACE, self.transport.abort)
