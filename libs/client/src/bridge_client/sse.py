"""The Server-Sent Events transport: one stream per subscription, reconnected forever.

Used when the WebSocket upgrade is refused by something in the way. The resume id goes
in `Last-Event-ID`; a full queue simply stops this stream's reading (backpressure) —
the gateway may then cut the stream off as a slow reader, and it resumes from there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from bridge_common.events import (
    ErrorMessage,
    Event,
    SnapshotFrame,
    Subscribed,
    decode_server_message,
)
from httpx_sse import SSEError, aconnect_sse

from .backoff import ReconnectSchedule
from .errors import BridgeClientError, HistoryLost, SubscriptionRejected, Unauthorized
from .subscription import Subscription

if TYPE_CHECKING:
    from .client import BridgeClient

log = logging.getLogger("bridge_client")


def filter_params(filter: dict[str, Any] | None) -> list[tuple[str, str]]:
    """`{"status": ["failed", "corrected"], "n": 3}` → status=failed&status=corrected&n=3."""
    params: list[tuple[str, str]] = []
    for field, value in (filter or {}).items():
        for v in value if isinstance(value, list) else [value]:
            params.append((field, _text(v)))
    return params


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


class SSEStream:
    """One subscription's event stream."""

    def __init__(self, client: BridgeClient, sub: Subscription) -> None:
        self.client = client
        self.sub = sub
        self.schedule = ReconnectSchedule(client.options.backoff)
        self.auth_failures = 0

    async def run(self) -> None:
        sub = self.sub
        while not sub.closed:
            try:
                if await self._stream():
                    return
            except (httpx.HTTPError, SSEError, OSError) as exc:
                log.info("bridge_client.sse.failed topic=%s error=%r", sub.topic, exc)
            except Exception as exc:
                log.exception("bridge_client.sse.crashed topic=%s", sub.topic)
                sub.fail(BridgeClientError(f"event stream loop failed: {exc!r}"))
                return
            finally:
                sub.set_down()
            delay = self.schedule.next_delay()
            log.info("bridge_client.sse.reconnect_in topic=%s seconds=%.3f", sub.topic, delay)
            await asyncio.sleep(delay)

    async def _stream(self) -> bool:
        """Read one stream until it ends; True when the subscription is over for good."""
        client, sub = self.client, self.sub
        token = await client._token()
        headers: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        since = sub.resume_from()
        sub._mark_requested()
        sub.sent_since = since
        params = filter_params(sub.filter)
        if since is not None:
            headers["Last-Event-ID"] = since
        elif sub.snapshot_request() is not None:
            params = [*params, ("snapshot", "1")]
        url = client.endpoints.events(sub.topic)
        async with aconnect_sse(
            client.http(), "GET", url, params=params, headers=headers
        ) as source:
            status = source.response.status_code
            if status == 403:
                await source.response.aread()
                rejected = _rejection(source.response, sub.topic)
                if rejected is not None and rejected.code == "forbidden":
                    sub.fail(rejected)  # the token is fine, this topic is not in it
                    return True
            if status in (401, 403):
                self.auth_failures += 1
                if (
                    not client.can_refresh_token
                    or self.auth_failures >= client.options.max_auth_failures
                ):
                    client._fail_all(Unauthorized(status))
                    return True
                return False
            if status != 200:
                await source.response.aread()
                rejected = _rejection(source.response, sub.topic)
                if rejected is not None:
                    sub.fail(rejected)
                    return True
                log.warning("bridge_client.sse.status topic=%s status=%s", sub.topic, status)
                return False
            self.auth_failures = 0
            client.connections += 1
            self.schedule.connected()
            try:
                async for sse in source.aiter_sse():
                    outcome = await self._handle(sse.data)
                    if outcome is not None:
                        return outcome
            finally:
                self.schedule.disconnected()
        return False

    async def _handle(self, data: str) -> bool | None:
        """None: keep reading; False: reconnect; True: the subscription is over."""
        sub = self.sub
        if not data:
            return None
        try:
            msg = decode_server_message(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("bridge_client.sse.bad_frame topic=%s error=%s", sub.topic, exc)
            return None
        if isinstance(msg, Event):
            try:
                if msg.topic == sub.topic and sub.is_new(msg):
                    await sub.put(msg)
            except ValueError:
                log.warning("bridge_client.bad_event_id topic=%s id=%r", msg.topic, msg.id)
        elif isinstance(msg, SnapshotFrame):
            if msg.topic == sub.topic:
                await sub.put(sub.snapshot_rows(msg))
        elif isinstance(msg, Subscribed):
            done = sub.subscribed(msg)
            if done is not None:
                await sub.put(done)
        elif isinstance(msg, ErrorMessage):
            if msg.code == "history_lost":
                await sub.put(HistoryLost(sub.topic, sub.sent_since, msg.message))
                return None
            rejected = SubscriptionRejected(msg.code, msg.message, sub.topic)
            sub.failed_requests += 1
            if (
                msg.code != "bad_request"
                or sub.failed_requests > self.client.options.max_subscribe_retries
            ):
                sub.fail(rejected)
                return True
            log.warning(
                "bridge_client.sse.subscribe_failed topic=%s message=%s", sub.topic, msg.message
            )
            return False  # `bad_request` may be Redis trouble under the gateway: retry
        return None


def _rejection(response: httpx.Response, topic: str) -> SubscriptionRejected | None:
    """A JSON error body with a protocol error code ends the subscription; others retry."""
    if response.status_code >= 500 or response.status_code in (401, 408, 429):
        return None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return SubscriptionRejected(body["code"], str(body.get("message", "")), topic)
    if response.status_code in (400, 404, 422):
        return SubscriptionRejected("bad_request", f"HTTP {response.status_code}", topic)
    return None
