"""WebSocket endpoints `/ws` and `/ws/intents`: handshake checks, the reader and the writer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from bridge_common.logging import get_logger
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from . import metrics
from .auth import token_from
from .clients import POLICY_VIOLATION, Client
from .errors import GatewayError, Unauthorized
from .sessions import Session
from .ws_protocol import EXTENSION

if TYPE_CHECKING:
    from .gateway import Gateway

log = get_logger(__name__)

#: query parameters of `/ws/intents` that are not row filters
WS_RESERVED = frozenset({"token", "since", "last_event_id"})


async def _deny(ws: WebSocket, status: int, code: str, message: str) -> None:
    """Answer the upgrade request with a plain HTTP error (no WebSocket is opened)."""
    metrics.REJECTED.labels(str(status)).inc()
    await ws.send_denial_response(
        JSONResponse({"type": "error", "code": code, "message": message}, status_code=status)
    )


async def websocket_endpoint(ws: WebSocket) -> None:
    gw: Gateway = ws.app.state.gateway
    if gw.stopping:
        await _deny(ws, 503, "unavailable", "gateway is shutting down")
        return
    if not gw.origin_allowed(ws.headers.get("origin")):
        await _deny(ws, 403, "forbidden", "origin not allowed")
        return
    try:
        principal = gw.auth.authenticate(token_from(ws.headers, ws.query_params))
    except Unauthorized as exc:
        await _deny(ws, 401, "unauthorized", exc.message)
        return
    if gw.at_capacity():
        await _deny(ws, 503, "unavailable", "too many connections")
        return
    await ws.accept()
    client = gw.open_client("ws", principal)
    ext: Any = ws.scope.get("extensions", {}).get(EXTENSION)
    writer: asyncio.Task[None] | None = None
    if ext is not None:
        client.on_cut = ext["cut"]
        client.sink = ext["write"]
        client.wait_writable = ext["wait_writable"]
    else:  # another ASGI server: a buffer and a writer task per connection
        writer = asyncio.create_task(_write(ws, client))
    session = Session(gw, client)
    try:
        if ws.url.path.rstrip("/").endswith("/ws/intents"):
            _auto_subscribe(session, ws)
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if client.closing:
                continue
            if not client.allow_message():
                client.cut(POLICY_VIOLATION, "rate limit exceeded", reason_label="flood")
                continue
            frame = message.get("text")
            if frame is None:
                frame = message.get("bytes") or b""
            session.handle_frame(frame)
    finally:
        await session.close()
        if writer is not None:
            await _stop_writer(writer, client)
        gw.close_client(client)


async def _stop_writer(writer: asyncio.Task[None], client: Client) -> None:
    if not writer.done():
        if not client.closing:
            client.close(1000, "", flush=False)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(writer), 1.0)
        writer.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await writer


def _auto_subscribe(session: Session, ws: WebSocket) -> None:
    """`/ws/intents` (the original service's endpoint) subscribes to `intents` on connect."""
    params = ws.query_params
    flt: dict[str, Any] = {}
    for key in params:
        if key not in WS_RESERVED:
            values = params.getlist(key)
            flt[key] = values if len(values) > 1 else values[0]
    since = params.get("since") or params.get("last_event_id")
    try:
        session.subscribe("intents", flt or None, since)
    except GatewayError as err:
        session.client.send_error(err)


async def _write(ws: WebSocket, client: Client) -> None:
    """Drain the client's buffer into the socket; close with the client's code at the end."""
    send = ws.send
    try:
        while True:
            await client.wakeup.wait()
            for item in client.take():
                if client.closing and not client.flush_before_close:
                    break
                await send({"type": "websocket.send", "text": item})
            if client.closing and (not client.flush_before_close or not client.wakeup.is_set()):
                break
    except Exception as exc:  # noqa: BLE001 - the peer went away mid-send
        log.debug("ws.write_failed", error=repr(exc))
        return
    code = client.close_code or 1000
    if client.on_cut is not None:
        client.on_cut(code, client.close_reason)
    else:
        with contextlib.suppress(Exception):
            await ws.close(code, client.close_reason)
