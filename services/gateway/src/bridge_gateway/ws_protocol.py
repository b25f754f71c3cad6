"""uvicorn's sans-I/O WebSocket protocol plus one capability the ASGI interface lacks:
closing *now* with a code and reason even when the peer has stopped reading.

ASGI `websocket.close` waits until the transport is writable, which a slow reader never
makes it. `cut` writes the close frame past the flow control, tells the application the
connection is over, and aborts the socket if the peer does not answer within a grace
period — so a stuck client costs nothing after it is cut.
"""

from __future__ import annotations

from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

#: seconds a cut peer has to answer the close frame before the socket is aborted
CUT_GRACE = 2.0

EXTENSION = "bridge.cut"


class GatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = cast(dict[str, Any] | None, getattr(self, "scope", None))
        if scope is not None:
            scope.setdefault("extensions", {})[EXTENSION] = {
                "cut": self.cut,
                "write": self.write_frame,
                "wait_writable": self.wait_writable,
            }

    def write_frame(self, frame: bytes) -> int:
        """Write a complete, pre-encoded frame; return the transport's buffered bytes.

        Frames are whole (never fragmented), so writing past the sans-I/O state machine is
        safe as long as the connection is open; afterwards this is a no-op returning -1.
        """
        if self.close_sent or self.transport.is_closing() or not self.handshake_complete:
            return -1
        self.transport.write(frame)
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
