"""What a connected client can do, whatever its transport: subscribe (with resume),
unsubscribe, ping — validated, authorised (`access.admit`: the effective filter, token
AND client) and bounded.

Resume without gap or duplicate: the subscription joins the live feed first (holding
events back), then the history is read after `since` (Redis's window, else the PostgreSQL
history, see `history.py`), then held-back events newer than the last replayed id are
released and the subscription goes live. `subscribed` is sent at
that switch: events before it are replay, events after it are live.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import msgspec
from bridge_common import tracing
from bridge_common.channels import ALERTS_TOPIC
from bridge_common.events import (
    Ping,
    SnapshotSpec,
    Subscribe,
    Unsubscribe,
    decode_client_message,
)
from bridge_common.logging import get_logger

from .access import admit, admit_presence
from .clients import Client, Delivery
from .errors import (
    BadRequest,
    GatewayError,
    HistoryLost,
    SnapshotTooLarge,
    SnapshotUnavailable,
    TooManySubscriptions,
    Unavailable,
    UnknownTopic,
)
from .event_ids import EventId, format_id, parse_id
from .filters import RowFilter
from .hub import Subscription
from .protocol import PONG, encode_subscribed
from .views import decode_meta, frame_for

#: snapshots one connection may have open at once
SNAPSHOTS_PER_CONNECTION = 2

if TYPE_CHECKING:
    from .gateway import Gateway

log = get_logger(__name__)


def _forget_task(sub: Subscription, task: asyncio.Task[None]) -> None:
    """A live subscription keeps no finished task (memory per idle connection)."""
    if sub.task is task:
        sub.task = None


class Session:
    """The protocol state of one client connection."""

    def __init__(self, gateway: Gateway, client: Client) -> None:
        self.gw = gateway
        self.client = client
        self.subs: dict[str, Subscription] = {}
        self.snapshots = 0

    # -- frames (WebSocket) -------------------------------------------------------------
    def handle_frame(self, frame: str | bytes) -> None:
        """One client message; errors are answered, never raised."""
        try:
            msg = decode_client_message(frame)
        except msgspec.ValidationError as exc:
            self.client.send_error(BadRequest(f"invalid message: {exc}"))
            return
        except msgspec.DecodeError:
            self.client.send_error(BadRequest("malformed JSON: one JSON object per frame"))
            return
        except UnicodeDecodeError:
            # a binary frame whose JSON strings are not UTF-8
            self.client.send_error(BadRequest("invalid UTF-8 in the JSON message"))
            return
        except RecursionError:
            self.client.send_error(BadRequest("message nested too deeply"))
            return
        try:
            if isinstance(msg, Subscribe):
                self.subscribe(
                    msg.topic, msg.filter, msg.since, msg.snapshot, presence=msg.presence
                )
            elif isinstance(msg, Unsubscribe):
                self.unsubscribe(msg.topic)
            elif isinstance(msg, Ping):
                self.client.send_message(PONG)
        except GatewayError as err:
            self.client.send_error(err)

    # -- operations ---------------------------------------------------------------------
    def subscribe(
        self,
        topic: Any,
        filter_spec: Any = None,
        since: str | None = None,
        snapshot: bool | SnapshotSpec | None = None,
        *,
        presence: bool = False,
    ) -> Subscription:
        """Validate synchronously (raises GatewayError), then go live in a task."""
        row_filter = admit(self.client.principal, topic, filter_spec)
        if presence:
            admit_presence(self.client.principal, topic)
        since_id: EventId | None = None
        if since is not None:
            try:
                since_id = parse_id(since)
            except BadRequest as err:
                err.topic = topic
                raise
        snapshot_limit = self.snapshot_limit(topic, snapshot, since)
        return self.open(
            topic, row_filter, since_id, presence=presence, snapshot_limit=snapshot_limit
        )

    def open(
        self,
        topic: str,
        row_filter: RowFilter | None,
        since: EventId | None = None,
        *,
        presence: bool = False,
        snapshot_limit: int | None = None,
    ) -> Subscription:
        """Subscribe with an effective filter from :func:`access.admit` (and a snapshot
        limit from :meth:`snapshot_limit`, if any); go live in a task."""
        if topic in self.subs:
            self.unsubscribe(topic)  # re-subscribing replaces filter and position
        if len(self.subs) >= self.client.limits.max_subscriptions:
            raise TooManySubscriptions(
                f"at most {self.client.limits.max_subscriptions} subscriptions per connection",
                topic=topic,
            )
        sub = Subscription(self.client, topic, row_filter)
        self.subs[topic] = sub
        task = asyncio.get_running_loop().create_task(
            self._open(sub, since, presence, snapshot_limit)
        )
        sub.task = task
        task.add_done_callback(lambda _: _forget_task(sub, task))
        return sub

    def snapshot_limit(
        self, topic: str, snapshot: bool | SnapshotSpec | None, since: Any
    ) -> int | None:
        """The row limit of a requested snapshot (None: no snapshot); raises when it
        cannot be served."""
        if snapshot is None or snapshot is False:
            return None
        if since is not None:
            raise BadRequest(
                "snapshot and since exclude each other: a snapshot starts a view afresh",
                topic=topic,
            )
        if self.gw.snapshots is None:
            raise SnapshotUnavailable(
                "snapshots are not enabled on this gateway (BRIDGE_SNAPSHOT_DSN)", topic=topic
            )
        most = self.gw.settings.snapshot_max_rows
        limit = snapshot.limit if isinstance(snapshot, SnapshotSpec) else None
        if limit is None:
            return most
        if isinstance(limit, bool) or limit < 1:
            raise BadRequest("snapshot limit must be a positive integer", topic=topic)
        if limit > most:
            raise SnapshotTooLarge(
                f"snapshot limit {limit} is above this gateway's BRIDGE_SNAPSHOT_MAX_ROWS ({most})",
                topic=topic,
            )
        return limit

    def unsubscribe(self, topic: str) -> None:
        sub = self.subs.pop(topic, None)
        if sub is None:
            return
        if sub.task is not None and not sub.task.done():
            sub.task.cancel("unsubscribed")
        self.gw.hub.detach(sub)
        self.gw.presence.leave(self.client, topic)

    def close_now(self) -> list[asyncio.Task[None]]:
        """Drop every subscription at once; returns the tasks that were cancelled."""
        subs = list(self.subs.values())
        for topic in list(self.subs):
            self.unsubscribe(topic)
        return [s.task for s in subs if s.task is not None]

    async def close(self) -> None:
        tasks = self.close_now()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- going live -----------------------------------------------------------------------
    async def _open(
        self,
        sub: Subscription,
        since: EventId | None,
        presence: bool,
        snapshot_limit: int | None = None,
    ) -> None:
        topic = sub.topic
        client = self.client
        try:
            if topic != ALERTS_TOPIC and not await self.gw.topics.exists(topic):
                self.subs.pop(topic, None)
                client.send_error(UnknownTopic(f"no such topic {topic!r}", topic=topic))
                return
            await self.gw.hub.attach(sub)
            if snapshot_limit is not None:
                await self._snapshot(sub, snapshot_limit)
                if not client.closing:
                    self.gw.presence.join(client, topic, watch=presence)
                return
            if since is None:
                client.send_message(encode_subscribed(topic, False), sse_event="subscribed")
                sub.go_live(None)
                self.gw.presence.join(client, topic, watch=presence)
                return
            last, lost = await self._replay(sub, since)
            if lost is not None:
                self.gw.count_history_lost()
                client.send_error(lost)
            client.send_message(encode_subscribed(topic, lost is None), sse_event="subscribed")
            sub.go_live(last)
            self.gw.presence.join(client, topic, watch=presence)
        except asyncio.CancelledError:
            raise
        except GatewayError as err:
            if self.subs.get(topic) is sub:
                self.unsubscribe(topic)
            client.send_error(err)
        except Exception as exc:  # noqa: BLE001 - Redis trouble: tell the client, keep the process
            log.warning("session.subscribe_failed", topic=topic, error=str(exc))
            if self.subs.get(topic) is sub:
                self.unsubscribe(topic)
            client.send_error(
                GatewayError(f"subscription to {topic!r} failed, retry later", topic=topic)
            )

    async def _replay(
        self, sub: Subscription, after: EventId
    ) -> tuple[EventId, HistoryLost | None]:
        """Deliver the events after `after` (those after the snapshot, if any) in the
        frames live delivery would give; returns the last id read."""
        topic = sub.topic
        client = self.client
        cutover = sub.cutover
        last = after
        lost: HistoryLost | None = None
        span = tracing.start_span("bridge.gateway", "gateway.replay", {"bridge.topic": topic})
        try:
            async for batch in self.gw.history.read_after(topic, after):
                for event_id, id_bytes, raw, meta_bytes in batch:
                    last = event_id
                    meta = decode_meta(meta_bytes)
                    if cutover is not None and not cutover.after(meta.x):
                        continue
                    frame = frame_for(sub.filter, topic, id_bytes, raw, meta)
                    if frame is None:
                        continue
                    await client.wait_room()
                    if client.closing:
                        tracing.end_span(span, {"bridge.history_lost": False})
                        return last, None
                    client.deliver(Delivery(topic, frame, id_bytes))
                self.gw.count_replayed(len(batch))
        except HistoryLost as exc:
            lost = exc
        tracing.end_span(span, {"bridge.history_lost": lost is not None})
        return last, lost

    async def _snapshot(self, sub: Subscription, limit: int) -> None:
        """Rows, then the events after them (docs/architecture.md, "Snapshots"): the
        position is read before the snapshot is taken, so every event the snapshot does
        not show lies after it; replay from there and live delivery drop every event
        whose transaction the snapshot shows."""
        snapshots = self.gw.snapshots
        assert snapshots is not None
        topic = sub.topic
        client = self.client
        if self.snapshots >= SNAPSHOTS_PER_CONNECTION:
            raise Unavailable(
                f"at most {SNAPSHOTS_PER_CONNECTION} snapshots at once per connection; retry",
                topic=topic,
            )
        self.snapshots += 1
        try:
            position = await self.gw.history.tail(topic)
            async with snapshots.open(topic) as snap:
                sub.cutover = snap.cutover
                async for frame in snap.frames(sub.filter, limit):
                    await client.wait_room()
                    if client.closing:
                        return
                    client.send_message(frame, sse_event="snapshot")
        finally:
            self.snapshots -= 1
        # the rows are complete: what follows are the events after them, replayed from
        # the position and then live, each dropped when the snapshot shows it
        client.send_message(
            encode_subscribed(topic, False, format_id(position)), sse_event="subscribed"
        )
        last, lost = await self._replay(sub, position)
        if lost is not None:
            self.gw.count_history_lost()
            client.send_error(lost)
        sub.go_live(last)
