"""The WebSocket transport: one connection carrying every subscription, reconnected forever.

A writer task reconciles what is subscribed on the connection with what the caller
wants (subscribe with the resume id, unsubscribe what was closed); the reader routes
frames to subscriptions. A subscription whose queue overflows is held back and the
connection is dropped, so nothing in flight for it can arrive out of order: it is
subscribed again, from its last delivered id, once the caller has drained its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from bridge_common.events import (
    ErrorMessage,
    Event,
    Pong,
    Presence,
    SnapshotFrame,
    Subscribed,
    decode_server_message,
    dumps,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backoff import ReconnectSchedule, backoff_delay
from .errors import HistoryLost, SubscriptionRejected, Unauthorized
from .subscription import Subscription

if TYPE_CHECKING:
    from .client import BridgeClient

log = logging.getLogger("bridge_client")

#: upgrade answers that mean "not now", not "no WebSocket here"
_RETRY_STATUSES = frozenset({408, 429, 503})
_AUTH_STATUSES = frozenset({401, 403})


class FallbackToSSE(Exception):  # noqa: N818 - a signal between transports, not an error
    """The gateway answered the upgrade, but not with a WebSocket: use SSE instead."""


class _Overflow(Exception):  # noqa: N818
    """A subscription's queue is full: drop this connection."""


def subscribe_frame(sub: Subscription) -> bytes:
    msg: dict[str, Any] = {"type": "subscribe", "topic": sub.topic}
    if sub.filter:
        msg["filter"] = sub.filter
    since = sub.resume_from()
    sub.sent_since = since
    if since is not None:
        msg["since"] = since
    else:
        snapshot = sub.snapshot_request()
        if snapshot is not None:
            msg["snapshot"] = snapshot
    if sub.presence is not None:
        msg["presence"] = True
    return dumps(msg)


class WebSocketSession:
    """Connect, serve, back off, repeat — until the client closes or auth is refused."""

    def __init__(self, client: BridgeClient) -> None:
        self.client = client
        self.schedule = ReconnectSchedule(client.options.backoff)
        self.auth_failures = 0

    async def run(self) -> None:
        client = self.client
        opts = client.options
        while True:
            while not any(s.active for s in client.subscriptions):
                await client._wait_changed()
            token = await client._token()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                ws = await connect(
                    client.endpoints.websocket,
                    additional_headers=headers,
                    open_timeout=opts.open_timeout,
                    ping_interval=opts.ping_interval,
                    ping_timeout=opts.ping_timeout,
                    max_size=opts.max_message_size,
                    close_timeout=2.0,
                    proxy=None,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in _AUTH_STATUSES:
                    if self._refused(status):
                        return
                    log.warning("bridge_client.ws.unauthorized status=%s", status)
                elif status in _RETRY_STATUSES or opts.transport == "websocket":
                    log.warning("bridge_client.ws.refused status=%s", status)
                else:
                    raise FallbackToSSE(f"WebSocket upgrade answered HTTP {status}") from exc
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                log.info("bridge_client.ws.connect_failed error=%r", exc)
            else:
                self.auth_failures = 0
                client.transport = "websocket"
                client.connections += 1
                self.schedule.connected()
                try:
                    overflowed = await self._serve(ws)
                finally:
                    self.schedule.disconnected()
                    for sub in client.subscriptions:
                        sub.set_down()
                if overflowed:
                    continue  # our own doing, not the gateway's: no backoff
            delay = self.schedule.next_delay()
            log.info("bridge_client.ws.reconnect_in seconds=%.3f", delay)
            await asyncio.sleep(delay)

    def _refused(self, status: int) -> bool:
        """Count a 401/403; True when it is final (no provider, or too many in a row)."""
        self.auth_failures += 1
        client = self.client
        if not client.can_refresh_token or self.auth_failures >= client.options.max_auth_failures:
            client._fail_all(Unauthorized(status))
            return True
        return False

    async def _serve(self, ws: ClientConnection) -> bool:
        """Serve one connection until it ends; True when a full queue ended it."""
        on_wire: dict[str, Subscription] = {}
        self.client._changed()
        writer = asyncio.create_task(self._write(ws, on_wire), name="bridge-client-ws-writer")
        try:
            await self._read(ws, on_wire, writer)
        except _Overflow as exc:
            log.info("bridge_client.ws.queue_full topic=%s; held until drained", exc)
            ws.close_timeout = 0.1  # whatever is in flight is unwanted: don't wait for it
            return True
        except ConnectionClosed as exc:
            log.info(
                "bridge_client.ws.closed code=%s reason=%s",
                exc.rcvd and exc.rcvd.code,
                exc.rcvd and exc.rcvd.reason,
            )
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer
            await ws.close()
        return False

    async def _write(self, ws: ClientConnection, on_wire: dict[str, Subscription]) -> None:
        """Make the connection's subscriptions match the caller's, whenever they change."""
        client = self.client
        while True:
            await client._wait_changed()
            now = time.monotonic()
            wanted = {s.topic: s for s in client.subscriptions if s.active and s.not_before <= now}
            for topic, sub in list(on_wire.items()):
                if wanted.get(topic) is not sub:
                    del on_wire[topic]
                    await ws.send(dumps({"type": "unsubscribe", "topic": topic}).decode())
            for topic, sub in wanted.items():
                if topic not in on_wire:
                    frame = subscribe_frame(sub)
                    on_wire[topic] = sub
                    sub._mark_requested()
                    await ws.send(frame.decode())

    async def _read(
        self,
        ws: ClientConnection,
        on_wire: dict[str, Subscription],
        writer: asyncio.Task[None],
    ) -> None:
        async for frame in ws:
            if writer.done():
                writer.result()  # a send failed: surface it
            try:
                msg = decode_server_message(frame)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("bridge_client.ws.bad_frame error=%s", exc)
                continue
            if isinstance(msg, Event):
                sub = on_wire.get(msg.topic)
                if sub is None or not sub.active:
                    continue  # in flight before an unsubscribe
                self._deliver(sub, msg)
            elif isinstance(msg, SnapshotFrame):
                sub = on_wire.get(msg.topic)
                if sub is not None and sub.active and not sub.offer(sub.snapshot_rows(msg)):
                    sub.held = True
                    raise _Overflow(sub.topic)
            elif isinstance(msg, Subscribed):
                sub = on_wire.get(msg.topic)
                if sub is not None:
                    done = sub.subscribed(msg)
                    if done is not None and not sub.offer(done):
                        sub.held = True
                        raise _Overflow(sub.topic)
            elif isinstance(msg, Presence):
                sub = on_wire.get(msg.topic)
                if sub is not None and sub.presence is not None and sub.active:
                    sub.presence.apply(msg)
            elif isinstance(msg, ErrorMessage):
                self._error(msg, on_wire)
            elif isinstance(msg, Pong):
                pass

    def _deliver(self, sub: Subscription, event: Event) -> None:
        try:
            if not sub.is_new(event):
                return
        except ValueError:
            log.warning("bridge_client.bad_event_id topic=%s id=%r", event.topic, event.id)
            return
        if not sub.offer(event):
            sub.held = True
            raise _Overflow(sub.topic)

    def _error(self, msg: ErrorMessage, on_wire: dict[str, Subscription]) -> None:
        sub = on_wire.get(msg.topic) if msg.topic else None
        if sub is None:
            log.warning("bridge_client.ws.error code=%s message=%s", msg.code, msg.message)
            return
        if msg.code == "history_lost":
            if not sub.offer(HistoryLost(sub.topic, sub.sent_since, msg.message)):
                sub.held = True
                raise _Overflow(sub.topic)
            return
        del on_wire[sub.topic]
        rejected = SubscriptionRejected(msg.code, msg.message, sub.topic)
        if msg.code != "bad_request":
            sub.fail(rejected)
            return
        # `bad_request` is also what a gateway answers when Redis failed under the
        # subscribe: retry on the backoff schedule, give up after a few in a row.
        sub.failed_requests += 1
        opts = self.client.options
        if sub.failed_requests > opts.max_subscribe_retries:
            sub.fail(rejected)
            return
        delay = backoff_delay(sub.failed_requests - 1, opts.backoff.base, opts.backoff.cap)
        log.warning(
            "bridge_client.ws.subscribe_failed topic=%s retry_in=%.3f message=%s",
            sub.topic,
            delay,
            msg.message,
        )
        sub.not_before = time.monotonic() + delay
        asyncio.get_running_loop().call_later(delay, self.client._changed)
