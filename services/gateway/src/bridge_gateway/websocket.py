"""WebSocket endpoints `/ws` and `/ws/intents`: handshake checks, the reader and the writer."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from bridge_common.logging import get_logger
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from . import metrics
from .auth import Principal, token_from
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
    """Answer the upgrade request with a plain HTTP error (no WebSocket is opened).

    It carries the CORS headers of an SSE refusal; browsers do not expose an upgrade's
    status to pages anyway (client.js asks the SSE endpoint), other clients read it.
    """
    metrics.REJECTED.labels(str(status)).inc()
    gw: Gateway = ws.app.state.gateway
    await ws.send_denial_response(
        JSONResponse(
            {"type": "error", "code": code, "message": message},
            status_code=status,
            headers=gw.cors_headers(ws.headers.get("origin")),
        )
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
    ext: Any = ws.scope.get("extensions", {}).get(EXTENSION)
    if ext is not None:
        _run_detached(gw, ws, principal, ext)
        return
    # another ASGI server: a buffer, a writer task and a reader loop per connection
    client = gw.open_client("ws", principal)
    session = Session(gw, client)
    writer = asyncio.create_task(_write(ws, client))
    try:
        if _is_intents(ws):
            _auto_subscribe(session, ws)
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            frame = message.get("text")
            _on_frame(client, session, frame if frame is not None else message.get("bytes") or b"")
    finally:
        await session.close()
        await _stop_writer(writer, client)
        gw.close_client(client)


def _is_intents(ws: WebSocket) -> bool:
    return ws.url.path.rstrip("/").endswith("/ws/intents")


def _on_frame(client: Client, session: Session, frame: str | bytes) -> None:
    if client.closing:
        return
    if not client.allow_message():
        client.cut(POLICY_VIOLATION, "rate limit exceeded", reason_label="flood")
        return
    try:
        session.handle_frame(frame)
    except Exception:
        log.exception("ws.frame_failed")
        client.cut(1011, "internal error", reason_label="error")


def _run_detached(gw: Gateway, ws: WebSocket, principal: Principal, ext: Any) -> None:
    """Write-through and callbacks: after this the connection needs no task of its own."""
    client = gw.open_client("ws", principal, write_through=True)
    client.on_cut = ext["cut"]
    client.sink = ext["write"]
    client.wait_writable = ext["wait_writable"]
    client.backlog = ext["buffered"]
    session = Session(gw, client)

    def on_frame(frame: str | bytes) -> None:
        _on_frame(client, session, frame)

    def on_gone() -> None:
        session.close_now()
        gw.close_client(client)

    ext["detach"](on_frame, on_gone)
    if _is_intents(ws):
        _auto_subscribe(session, ws)


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
