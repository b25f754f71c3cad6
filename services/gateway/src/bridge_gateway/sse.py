"""Server-Sent Events: `/events/{topic}` and the original service's aliases.

Frames: `id: <event id>` / `event: <topic>` / `data: <event JSON>`; `event: subscribed`
when the stream is live (after any replay); with `?snapshot=1` first `event: snapshot`
frames (no id) with the rows; `event: error` (data = the error JSON, no
id) for `history_lost`; a `: ping` comment every `BRIDGE_GATEWAY_SSE_HEARTBEAT` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from bridge_common.channels import ALERTS_TOPIC
from bridge_common.logging import get_logger
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from . import metrics
from .access import admit
from .auth import Principal, token_from
from .clients import Client
from .errors import (
    BadRequest,
    GatewayError,
    SnapshotUnavailable,
    Unauthorized,
    UnknownTopic,
)
from .event_ids import EventId, parse_id
from .filters import RowFilter
from .sessions import Session
from .streaming import EXTENSION, StreamOut

log = get_logger(__name__)

if TYPE_CHECKING:
    from .gateway import Gateway

#: query parameters that are not row filters
RESERVED = frozenset({"token", "last_event_id", "close_after", "snapshot"})
MAX_CLOSE_AFTER = 1_000_000

_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_topic": 404,
    "too_many_subscriptions": 429,
    "unavailable": 503,
    "snapshot_unavailable": 501,
    "snapshot_too_large": 413,
}


def _error(
    code: str, message: str, topic: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A refusal; `headers` carries the CORS headers so a browser page can read it."""
    status = _STATUS.get(code, 400)
    metrics.REJECTED.labels(str(status)).inc()
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if topic is not None:
        body["topic"] = topic
    return JSONResponse(body, status_code=status, headers=headers)


async def events_topic(request: Request) -> Response:
    return await _open(request, request.path_params["topic"], {})


async def events_intent(request: Request) -> Response:
    """`/events/intents/{intent_id}`: the `intents` topic filtered on one row id."""
    return await _open(request, "intents", {"id": request.path_params["intent_id"]})


async def events_audit_logs(request: Request) -> Response:
    return await _open(request, "audit_logs", {})


async def _open(request: Request, topic: str, fixed: dict[str, Any]) -> Response:
    gw: Gateway = request.app.state.gateway
    origin = request.headers.get("origin")
    cors = gw.cors_headers(origin)
    if gw.stopping:
        return _error("unavailable", "gateway is shutting down", headers=cors)
    if not gw.origin_allowed(origin):
        return _error("forbidden", "origin not allowed", headers=cors)
    try:
        principal = gw.auth.authenticate(token_from(request.headers, request.query_params))
    except Unauthorized as exc:
        return _error("unauthorized", exc.message, headers=cors)
    if gw.at_capacity():
        return _error("unavailable", "too many connections", headers=cors)
    params = request.query_params
    spec: dict[str, Any] = {}
    for key in params:
        if key not in RESERVED:
            values = params.getlist(key)
            spec[key] = values if len(values) > 1 else values[0]
    spec.update(fixed)
    try:
        row_filter = admit(principal, topic, spec)
        raw_since = request.headers.get("last-event-id") or params.get("last_event_id") or None
        since = parse_id(raw_since) if raw_since is not None else None
        close_after = _close_after(params.get("close_after"))
        # a reconnecting EventSource repeats the URL with Last-Event-ID: it resumes its view
        snapshot = since is None and _flag(params.get("snapshot"))
        if snapshot and gw.snapshots is None:
            raise SnapshotUnavailable(
                "snapshots are not enabled on this gateway (BRIDGE_SNAPSHOT_DSN)", topic=topic
            )
        if topic != ALERTS_TOPIC and not await gw.topics.exists(topic):
            raise UnknownTopic(f"no such topic {topic!r}", topic=topic)
    except GatewayError as err:
        return _error(err.code, err.message, err.topic, headers=cors)
    except (RedisError, OSError):
        # the topic registry could not be read: a refusal like any other (JSON, CORS), so
        # a browser on another origin sees a retryable 503 rather than a network error
        return _error("unavailable", "Redis does not answer; retry", topic, headers=cors)
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **cors}
    stream = EventStream(gw, principal, topic, row_filter, since, close_after, headers)
    stream.snapshot = snapshot
    return stream


def _flag(raw: str | None) -> bool:
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("", "0", "false", "no"):
        return False
    raise BadRequest("snapshot must be 1 or 0")


def _close_after(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise BadRequest("close_after must be a positive integer") from None
    if not 1 <= n <= MAX_CLOSE_AFTER:
        raise BadRequest(f"close_after must be between 1 and {MAX_CLOSE_AFTER}")
    return n


class EventStream(Response):
    """The streaming body of one SSE subscription (a validated request)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        gateway: Gateway,
        principal: Principal,
        topic: str,
        row_filter: RowFilter | None,
        since: EventId | None,
        close_after: int | None,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content=None, headers=headers, media_type=self.media_type)
        # a stream has no length: drop the `content-length: 0` Response adds for no content
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.gw = gateway
        self.principal = principal
        self.topic = topic
        self.row_filter = row_filter
        self.since = since
        self.close_after = close_after
        #: rows first (`event: snapshot` frames), then the events after them
        self.snapshot = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        out = scope.get("extensions", {}).get(EXTENSION)
        if isinstance(out, StreamOut):
            await self._write_through(out, receive, send)
        else:
            await self._buffered(receive, send)

    def _subscribe(self, session: Session) -> None:
        """Open the subscription with the filter `access.admit` gave (token ∧ query), the
        rows first when `?snapshot=1` asked for them; raises GatewayError."""
        limit = session.snapshot_limit(self.topic, True if self.snapshot else None, None)
        session.open(self.topic, self.row_filter, self.since, snapshot_limit=limit)

    async def _write_through(self, out: StreamOut, receive: Receive, send: Send) -> None:
        """The gateway's own server: the fan-out writes each event straight to the socket;
        this task only sends heartbeats and ends the response."""
        gw = self.gw
        client = gw.open_client("sse", self.principal, write_through=True)
        client.events_left = self.close_after
        ended = asyncio.Event()

        def end(code: int, reason: str) -> None:
            ended.set()

        client.on_cut = end
        client.sink = out.write
        client.wait_writable = out.wait_writable
        client.backlog = out.buffered
        session = Session(gw, client)
        watcher = asyncio.create_task(_watch_disconnect(receive, client))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            client.chunked = out.chunked
            await send(
                {"type": "http.response.body", "body": b": connected\n\n", "more_body": True}
            )
            if not client.closing:
                try:
                    self._subscribe(session)
                except GatewayError as err:
                    client.send_error(err)
                    client.close(1000, err.message, flush=True)
            beat = gw.settings.sse_heartbeat
            while not ended.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), beat)
                if not ended.is_set():
                    out.comment(b": ping\n\n")
        except OSError:
            pass  # peer gone
        finally:
            watcher.cancel()
            await session.close()
            if client.closing and not client.flush_before_close and out.buffered():
                # cut (slow reader, shutdown): what the socket still holds is dropped
                out.abort()
            else:
                try:
                    await asyncio.wait_for(
                        send({"type": "http.response.body", "body": b"", "more_body": False}),
                        1.0,
                    )
                except TimeoutError:
                    out.abort()  # the peer did not take the rest within the second
                except Exception:  # noqa: BLE001 - the peer went away
                    log.debug("sse.end_failed", exc_info=True)
            gw.close_client(client)

    async def _buffered(self, receive: Receive, send: Send) -> None:
        """Another ASGI server: a buffer per client, drained by a writer task."""
        gw = self.gw
        client = gw.open_client("sse", self.principal)
        client.events_left = self.close_after
        session = Session(gw, client)
        pump = asyncio.create_task(self._pump(client, send))

        def stop_pump(code: int, reason: str) -> None:
            pump.cancel()

        client.on_cut = stop_pump
        watcher = asyncio.create_task(_watch_disconnect(receive, client))
        try:
            try:
                self._subscribe(session)
            except GatewayError as err:
                client.send_error(err)
                client.close(1000, err.message, flush=True)
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        finally:
            watcher.cancel()
            pump.cancel()
            await session.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}), 1.0
                )
            gw.close_client(client)

    async def _pump(self, client: Client, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
        beat = self.gw.settings.sse_heartbeat
        try:
            while True:
                if not client.wakeup.is_set():
                    try:
                        await asyncio.wait_for(client.wakeup.wait(), beat)
                    except TimeoutError:
                        await send(
                            {"type": "http.response.body", "body": b": ping\n\n", "more_body": True}
                        )
                        continue
                items = client.take()
                if items:
                    body = b"".join(i if isinstance(i, bytes) else i.encode() for i in items)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                if client.closing and not client.wakeup.is_set():
                    return
        except OSError:
            return  # peer gone


async def _watch_disconnect(receive: Receive, client: Client) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            client.close(1000, "client gone", flush=False)
            return
