"""One topic subscription: a bounded queue the transports fill and the caller iterates.

The subscription owns the resume point. Every event whose id is not greater than the last
one handed to the queue is dropped, so replays after a reconnect never show the caller an
event twice, and since each (re)subscribe asks the gateway for what came after that id,
none is skipped either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge_common.events import Event, SnapshotFrame, Subscribed

from .errors import BridgeClientError, ClientClosed
from .eventid import EventKey, parse_event_id
from .presence import PresenceList

if TYPE_CHECKING:
    from .client import BridgeClient

FilterSpec = dict[str, Any]

_WAKE = object()


@dataclass(frozen=True, slots=True)
class SnapshotRows:
    """Rows of the snapshot a subscription asked for (`snapshot=True`), before its events.

    `first`: the first rows of a (re)started snapshot — drop what you hold for the topic;
    `complete`: the snapshot is whole, every item after this one is an event;
    `truncated`: the limit cut the rows (only on the complete item).
    """

    topic: str
    rows: list[dict[str, Any]]
    keys: list[str]
    first: bool
    complete: bool
    truncated: bool = False


Item = Event | SnapshotRows


@dataclass(slots=True)
class View:
    """The rows of a topic by event key, kept true by a subscription's rows and events:
    `insert`/`update` set the row, `delete`/`leave` drop it, `truncate` empties the view.
    """

    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the snapshot was read whole (events apply on top of it from then on)
    complete: bool = False
    truncated: bool = False

    def apply(self, item: Item) -> None:
        if isinstance(item, SnapshotRows):
            if item.first:
                self.rows.clear()
                self.complete = False
            self.rows.update(zip(item.keys, item.rows, strict=False))
            if item.complete:
                self.complete = True
                self.truncated = item.truncated
            return
        op = item.op
        if op in ("insert", "update"):
            if item.data is not None:
                self.rows[item.key] = item.data
            else:
                # too large to travel: its key is known, its values are not
                self.rows.pop(item.key, None)
        elif op in ("delete", "leave"):
            self.rows.pop(item.key, None)
        elif op == "truncate":
            self.rows.clear()


class Subscription:
    """Async iterator of `bridge_common.events.Event` for one topic (after
    `SnapshotRows` items when it was asked for a snapshot).

    Use it as ``async for event in client.subscribe(...)`` or as an async context
    manager that unsubscribes on exit. Raises `HistoryLost` (then keeps going),
    `SubscriptionRejected` / `Unauthorized` (final), and stops when it or the client
    is closed.
    """

    def __init__(
        self,
        client: BridgeClient,
        topic: str,
        filter: FilterSpec | None,
        since: str | None,
        *,
        queue_size: int,
        clock_skew: float,
        presence: bool = False,
        snapshot: bool | int = False,
    ) -> None:
        self.topic = topic
        #: who else is subscribed to the topic (WebSocket only), when asked for
        self.presence: PresenceList | None = PresenceList(topic) if presence else None
        #: rows first: True (up to the gateway's limit) or a row limit; False: events only
        self.snapshot = snapshot
        self._snapshot_done = False
        self._snapshot_frames = 0
        self._snapshot_truncated = False
        self.filter = dict(filter) if filter else None
        self.since = since
        #: id of the last event handed to the caller's queue
        self.last_id: str | None = since
        #: the last ``recovered`` flag the gateway sent
        self.recovered: bool | None = None
        self._client = client
        self._last_key: EventKey | None = parse_event_id(since) if since else None
        self._checked: tuple[str, EventKey] = ("", (0, 0))  # the id is_new() parsed last
        # Resume point when no event arrived before the first disconnect: stream ids are
        # millisecond timestamps, so "what came after subscribe()" is an id too.
        self._anchor = f"{max(0, int((time.time() - clock_skew) * 1000))}-0"
        self._requested = False
        #: the `since` of the latest subscribe request
        self.sent_since: str | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue(queue_size)
        self._low_water = max(0, queue_size // 2)
        self._live = asyncio.Event()
        # replaced by a fresh event on every state change; waiters hold the old one
        self._signal = asyncio.Event()
        self._closed = False
        self._failure: BridgeClientError | None = None
        #: set when the queue overflowed: not re-subscribed until the caller drains it
        self.held = False
        #: subscribe requests the gateway failed (`bad_request`) since the last success
        self.failed_requests = 0
        #: monotonic time before which the subscription is not requested again
        self.not_before = 0.0

    # -- caller side -------------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Item:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self.held and self._queue.qsize() <= self._low_water:
                self.held = False
                self._client._changed()
            if self._queue.empty() and self._failure is not None:
                raise self._failure
            item = await self._queue.get()
            if item is _WAKE:
                continue
            if isinstance(item, BridgeClientError):
                raise item
            assert isinstance(item, Event | SnapshotRows)
            return item

    async def view(self) -> AsyncIterator[View]:
        """The subscription as a :class:`View`: yields the same view object after every
        change once its snapshot is complete (`snapshot=True`) or from the first event."""
        current = View(complete=not self.snapshot)
        async for item in self:
            current.apply(item)
            if current.complete:
                yield current

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_live(self) -> None:
        """Wait until the gateway confirmed the subscription (it is live from then on).

        Bound it with ``asyncio.timeout``; raises the subscription's final error if any.
        """
        while not self._live.is_set():
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise ClientClosed(f"subscription to {self.topic} is closed")
            await self._signal.wait()

    @property
    def live(self) -> bool:
        return self._live.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Unsubscribe; the iterator stops."""
        if not self._closed:
            self._end()
            self._client._forget(self)

    # -- transport side ----------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Wanted on the wire now (not closed, not failed, not held for draining)."""
        return not self._closed and self._failure is None and not self.held

    def resume_from(self) -> str | None:
        """The `since` of the next subscribe request."""
        if self.last_id is not None:
            return self.last_id
        if self.snapshot and not self._snapshot_done:
            return None  # the snapshot starts again from scratch
        return self._anchor if self._requested else None

    def snapshot_request(self) -> bool | dict[str, int] | None:
        """The `snapshot` of the next subscribe request (None: resume or plain)."""
        if not self.snapshot or self._snapshot_done or self.last_id is not None:
            return None
        self._snapshot_frames = 0
        self._snapshot_truncated = False
        if self.snapshot is True:
            return True
        return {"limit": int(self.snapshot)}

    def snapshot_rows(self, frame: SnapshotFrame) -> SnapshotRows:
        item = SnapshotRows(
            frame.topic, frame.rows, frame.keys, self._snapshot_frames == 0, complete=False
        )
        self._snapshot_frames += 1
        self._snapshot_truncated = frame.truncated
        return item

    def subscribed(self, msg: Subscribed) -> SnapshotRows | None:
        """The gateway confirmed; after a snapshot, the item that completes its rows (the
        position becomes the resume point)."""
        done: SnapshotRows | None = None
        if msg.position is not None and self.snapshot and not self._snapshot_done:
            done = SnapshotRows(
                msg.topic,
                [],
                [],
                self._snapshot_frames == 0,
                complete=True,
                truncated=self._snapshot_truncated,
            )
            self._snapshot_done = True
            if self.last_id is None:
                self.last_id = msg.position
                self._last_key = parse_event_id(msg.position)
        self.set_live(msg.recovered)
        return done

    def _mark_requested(self) -> None:
        self._requested = True

    def is_new(self, event: Event) -> bool:
        """False for an event already delivered (id not above the last one)."""
        key = parse_event_id(event.id)
        self._checked = (event.id, key)
        return self._last_key is None or key > self._last_key

    def offer(self, item: Item | BridgeClientError) -> bool:
        """Queue an event or an in-band error without waiting; False when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        if isinstance(item, Event):
            self._record(item)
        return True

    async def put(self, item: Item | BridgeClientError) -> None:
        """Queue, waiting for room (backpressure for per-subscription transports)."""
        await self._queue.put(item)
        if isinstance(item, Event):
            self._record(item)

    def _record(self, event: Event) -> None:
        checked_id, key = self._checked
        self._last_key = key if checked_id == event.id else parse_event_id(event.id)
        self.last_id = event.id

    def set_live(self, recovered: bool) -> None:
        self.failed_requests = 0
        self.recovered = recovered
        self._live.set()
        self._notify()

    def set_down(self) -> None:
        self._live.clear()
        if self.presence is not None:
            self.presence.stale()

    def fail(self, error: BridgeClientError) -> None:
        """End the subscription with an error, raised after the queued events."""
        if self._failure is None and not self._closed:
            self._failure = error
            self._wake()
            self._client._forget(self)

    def _end(self) -> None:
        self._closed = True
        self._live.clear()
        if self.presence is not None:
            self.presence.close()
        self._wake()

    def _notify(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    def _wake(self) -> None:
        self._notify()
        try:
            self._queue.put_nowait(_WAKE)
        except asyncio.QueueFull:
            pass  # the consumer is not waiting on an empty queue then
