"""The fan-out hub: one live Redis subscription per topic, shared by every client.

Each topic with at least one subscriber has a :class:`Feed`. Live event bytes arrive on
the topic's pub/sub channel (SSUBSCRIBE on a cluster) already in wire form; the hub reads
the event id from them, drops anything not newer than the last id it delivered, decodes
the row at most once when some subscriber has a filter, and appends the same encoded
frame to every matching client's buffer (encode once, send many).

No gap when Redis drops: the hub reconnects with backoff and re-subscribes; while a feed
is re-synchronising, live messages are buffered, the history is read from the last
delivered id (the stream, else the PostgreSQL history when Redis lost data — see
`history.py`), and then the buffer is flushed skipping ids already delivered — connected
clients see every event once, in order. A subscription that replayed on its own (resume,
snapshot) goes live at the last id it replayed and drops what the feed, reading Redis a
little behind, dispatches at or below it.

Snapshot subscriptions drop every event whose transaction their snapshot shows, and a
filtered group gets a `leave` frame for an update that took a row out of its filter
(`views.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bridge_common import tracing
from bridge_common.channels import Channels
from bridge_common.db import Backoff
from bridge_common.events import event_prefix, fragment_traceparent
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis, is_cluster
from redis.exceptions import RedisError

from . import metrics
from .clients import SLOW_REASON, TRY_AGAIN_LATER, Client, Delivery
from .errors import BadRequest, HistoryLost
from .event_ids import EventId, parse_id
from .filters import FilterKey, RowFilter
from .history import History
from .views import (
    Cutover,
    Meta,
    RowPart,
    admits,
    decode_meta,
    decode_row,
    leave_frame,
    leaves,
    split_live,
)

log = get_logger(__name__)

#: live messages buffered per feed while it re-synchronises (beyond: re-read the stream)
SYNC_BUFFER = 10_000


def passes(row_filter: RowFilter, raw: bytes) -> bool:
    """Whether an event goes to a filtered subscriber (`views.admits`)."""
    return admits(row_filter, decode_row(raw))


class Subscription:
    """One client's subscription to one topic (with an optional filter).

    Until it is live (`pending` is not None) events from the feed are held back, so the
    resume logic can replay history first and then release only newer ones. With a
    snapshot, `cutover` drops every event whose transaction the snapshot already shows.
    """

    __slots__ = ("client", "topic", "filter", "pending", "task", "cutover", "floor")

    def __init__(self, client: Client, topic: str, row_filter: RowFilter | None) -> None:
        self.client = client
        self.topic = topic
        self.filter = row_filter
        self.pending: list[tuple[Delivery, int | None]] | None = []
        self.task: asyncio.Task[None] | None = None
        self.cutover: Cutover | None = None
        #: the replay reached this id: the feed may still dispatch older events it had not
        #: read from Redis yet — dropped until the first newer one (then ids only grow)
        self.floor: EventId | None = None

    @property
    def filter_key(self) -> FilterKey | None:
        return None if self.filter is None else self.filter.key

    def deliver(self, d: Delivery, txid: int | None = None) -> None:
        if self.pending is None:
            if self.floor is not None:
                if parse_id(d.event_id) <= self.floor:
                    return  # replayed already
                self.floor = None
            if self.cutover is None or self.cutover.after(txid):
                self.client.deliver(d)
        elif len(self.pending) >= self.client.limits.max_messages:
            metrics.SLOW_DROPPED.inc()
            self.client.cut(TRY_AGAIN_LATER, SLOW_REASON, reason_label="slow")
        else:
            self.pending.append((d, txid))

    def go_live(self, after: EventId | None) -> None:
        """Release held-back events newer than `after` (and after the snapshot, if any)
        and deliver directly from now on."""
        pending, self.pending = self.pending or [], None
        self.floor = after
        cutover = self.cutover
        for d, txid in pending:
            if (after is None or parse_id(d.event_id) > after) and (
                cutover is None or cutover.after(txid)
            ):
                self.client.deliver(d)


class _Group:
    __slots__ = ("filter", "subs")

    def __init__(self, row_filter: RowFilter | None) -> None:
        self.filter = row_filter
        self.subs: set[Subscription] = set()


class Feed:
    """The live subscription of one topic and its subscribers, grouped by filter."""

    def __init__(self, topic: str, channel: str) -> None:
        self.topic = topic
        self.channel = channel
        self.channel_bytes = channel.encode()
        self.prefix = event_prefix(topic)
        self.groups: dict[FilterKey | None, _Group] = {}
        self.size = 0
        self.last_id: EventId | None = None
        self.live = False
        self.ready = asyncio.Event()
        self.buffer: list[bytes] = []  # live messages (event + meta)
        self.overflow = False
        self.sync_task: asyncio.Task[None] | None = None
        self.events_in = metrics.EVENTS_IN.labels(topic)
        self.lag = metrics.DELIVERY_LAG.labels(topic)

    def add(self, sub: Subscription) -> None:
        key = sub.filter_key
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group(sub.filter)
        group.subs.add(sub)
        self.size += 1

    def remove(self, sub: Subscription) -> bool:
        group = self.groups.get(sub.filter_key)
        if group is None or sub not in group.subs:
            return False
        group.subs.discard(sub)
        self.size -= 1
        if not group.subs:
            del self.groups[sub.filter_key]
        return True

    def begin_sync(self) -> None:
        self.live = False
        self.ready.clear()
        self.buffer.clear()
        self.overflow = False
        if self.sync_task is not None:
            self.sync_task.cancel("resync")
            self.sync_task = None


class Hub:
    """Owns the live Redis connection and every feed (see the module docstring)."""

    def __init__(
        self,
        pubsub_client: AnyRedis,
        channels: Channels,
        history: History,
        *,
        retry_base: float = 0.1,
    ) -> None:
        self.pubsub_client = pubsub_client
        self.channels = channels
        self.history = history
        self.cluster = is_cluster(pubsub_client)
        self.feeds: dict[str, Feed] = {}
        self._by_channel: dict[bytes, Feed] = {}
        self._pubsub: Any = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry_base = retry_base
        self.connected = asyncio.Event()
        self.subscriptions = 0

    # -- subscribers ----------------------------------------------------------------------
    async def attach(self, sub: Subscription) -> None:
        """Add `sub` to its topic's feed; return once the feed is live."""
        async with self._lock:
            feed = self.feeds.get(sub.topic)
            if feed is None:
                feed = Feed(sub.topic, self.channels.live(sub.topic))
                self.feeds[sub.topic] = feed
                self._by_channel[feed.channel_bytes] = feed
                feed.add(sub)
                if self._pubsub is not None:
                    try:
                        await self._subscribe(self._pubsub, [feed.channel])
                    except (RedisError, OSError) as exc:
                        # the reader notices too, reconnects and subscribes every feed
                        log.warning("hub.subscribe_failed", topic=sub.topic, error=str(exc))
            else:
                feed.add(sub)
        self.subscriptions += 1
        metrics.SUBSCRIPTIONS.inc()
        await feed.ready.wait()

    def detach(self, sub: Subscription) -> None:
        feed = self.feeds.get(sub.topic)
        if feed is None or not feed.remove(sub):
            return
        self.subscriptions -= 1
        metrics.SUBSCRIPTIONS.dec()
        if feed.size == 0:
            self._spawn(self._drop_if_idle(feed))

    async def _drop_if_idle(self, feed: Feed) -> None:
        async with self._lock:
            if feed.size or self.feeds.get(feed.topic) is not feed:
                return
            del self.feeds[feed.topic]
            self._by_channel.pop(feed.channel_bytes, None)
            feed.begin_sync()
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._unsubscribe(self._pubsub, feed.channel)

    def feed_subscribers(self, topic: str) -> list[Subscription]:
        feed = self.feeds.get(topic)
        if feed is None:
            return []
        return [s for g in feed.groups.values() for s in g.subs]

    # -- Redis connection -----------------------------------------------------------------
    def _new_pubsub(self) -> Any:
        return self.pubsub_client.pubsub()

    async def _subscribe(self, ps: Any, channels: list[str]) -> None:
        if self.cluster:
            await ps.ssubscribe(*channels)
        else:
            await ps.subscribe(*channels)

    async def _unsubscribe(self, ps: Any, channel: str) -> None:
        if self.cluster:
            await ps.sunsubscribe(channel)
        else:
            await ps.unsubscribe(channel)

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the live subscription up until `stop`; reconnect with backoff."""
        backoff = Backoff(base=self._retry_base, cap=5.0)
        connected_once = False
        while not stop.is_set():
            ps: Any = None
            try:
                if self.cluster:
                    # the cluster client learns the slot map lazily; pubsub() needs it now
                    await self.pubsub_client.initialize()
                ps = self._new_pubsub()
                async with self._lock:
                    for feed in self.feeds.values():
                        feed.begin_sync()
                    if not self.cluster:
                        await ps.connect()
                    chans = [f.channel for f in self.feeds.values()]
                    if chans:
                        await self._subscribe(ps, chans)
                    self._pubsub = ps
                if connected_once:
                    metrics.REDIS_RECONNECTS.inc()
                    log.info("hub.redis_reconnected", feeds=len(chans))
                connected_once = True
                backoff.reset()
                self.connected.set()
                await self._read(ps, stop)
            except (RedisError, OSError) as exc:
                log.warning("hub.redis_lost", error=str(exc) or type(exc).__name__)
            finally:
                self.connected.clear()
                self._pubsub = None
                for feed in self.feeds.values():
                    feed.begin_sync()
                if ps is not None:
                    with contextlib.suppress(Exception):
                        await ps.aclose()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.next_delay())
        for task in list(self._tasks):
            task.cancel("shutdown")
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read(self, ps: Any, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.cluster:
                if not ps.shard_channels:
                    await asyncio.sleep(0.1)
                    continue
                msg = await ps.get_sharded_message(timeout=1.0)
            else:
                msg = await ps.get_message(timeout=1.0)
            if msg is not None:
                self._on_message(msg)

    def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel = msg.get("channel")
        if isinstance(channel, str):
            channel = channel.encode()
        feed = self._by_channel.get(channel) if isinstance(channel, bytes) else None
        if feed is None:
            return
        if kind in ("message", "smessage"):
            data = msg.get("data")
            if not isinstance(data, bytes):
                return
            if feed.live:
                self._dispatch(feed, data, live=True)
            elif len(feed.buffer) < SYNC_BUFFER:
                feed.buffer.append(data)
            else:
                feed.overflow = True
                feed.buffer.clear()
        elif kind in ("subscribe", "ssubscribe"):
            # the subscription is active: whatever is published from now on reaches us,
            # so reading the stream now leaves no gap
            feed.begin_sync()
            feed.sync_task = self._spawn(self._sync(feed))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _sync(self, feed: Feed) -> None:
        """Bring a (re)subscribed feed up to date from its stream, then go live."""
        attempt = Backoff(base=0.1, cap=2.0)
        while True:
            try:
                if feed.last_id is None:
                    # new feed: deliver from now on
                    feed.last_id = await self.history.tail(feed.topic)
                else:
                    await self._fill_gap(feed)
                while feed.overflow:
                    feed.overflow = False
                    feed.buffer.clear()
                    await self._fill_gap(feed)
                break
            except (RedisError, OSError) as exc:
                log.warning("hub.sync_failed", topic=feed.topic, error=str(exc))
                await attempt.sleep()
        # no await from here: flushing the buffer and going live is one step
        buffered, feed.buffer = feed.buffer, []
        for raw in buffered:
            self._dispatch(feed, raw, live=True)
        feed.live = True
        feed.ready.set()
        feed.sync_task = None

    async def _fill_gap(self, feed: Feed) -> None:
        assert feed.last_id is not None
        try:
            async for batch in self.history.read_after(feed.topic, feed.last_id):
                for event_id, id_bytes, raw, meta in batch:
                    self._deliver(feed, raw, event_id, id_bytes, meta, live=False)
        except HistoryLost as lost:
            log.warning("hub.history_lost", topic=feed.topic)
            metrics.HISTORY_LOST.inc()
            for sub in self.feed_subscribers(feed.topic):
                sub.client.send_error(lost)
            feed.last_id = await self.history.tail(feed.topic)

    # -- fan-out --------------------------------------------------------------------------
    def _dispatch(self, feed: Feed, data: bytes, *, live: bool) -> None:
        raw, meta = split_live(data)
        start = len(feed.prefix)
        end = raw.find(b'"', start)
        if end < 0 or not raw.startswith(feed.prefix):
            log.warning("hub.bad_event", topic=feed.topic, head=raw[:80].decode(errors="replace"))
            return
        id_bytes = raw[start:end]
        try:
            event_id = parse_id(id_bytes)
        except BadRequest:
            log.warning("hub.bad_event_id", topic=feed.topic)
            return
        self._deliver(feed, raw, event_id, id_bytes, meta, live=live)

    def _deliver(
        self,
        feed: Feed,
        raw: bytes,
        event_id: EventId,
        id_bytes: bytes,
        meta_bytes: bytes,
        *,
        live: bool,
    ) -> None:
        if feed.last_id is not None and event_id <= feed.last_id:
            return  # already delivered (live and replay overlap)
        feed.last_id = event_id
        feed.events_in.inc()
        traced = tracing.enabled()
        started = time.time_ns() if traced else 0
        d = Delivery(feed.topic, raw, id_bytes)
        meta: Meta = decode_meta(meta_bytes)
        txid = meta.x
        decoded: RowPart | None = None
        leave: Delivery | None = None
        n = 0
        # decided once per filter group, encoded once per event (views.py)
        for group in feed.groups.values():
            flt = group.filter
            frame = d
            if flt is not None:
                if decoded is None:
                    decoded = decode_row(raw)
                if not admits(flt, decoded):
                    if not leaves(flt, decoded, meta):
                        continue
                    if leave is None:
                        leave = Delivery(
                            feed.topic, leave_frame(feed.topic, id_bytes, decoded), id_bytes
                        )
                    frame = leave
            for sub in group.subs:
                sub.deliver(frame, txid)
            n += len(group.subs)
        if n:
            metrics.EVENTS_OUT.inc(n)
        if live:
            lag = max(0.0, time.time() - event_id[0] / 1000.0)
            metrics.FANOUT_LATENCY.observe(lag)
            feed.lag.observe(lag)  # publish (the id's time) → queued on every client
        if traced:
            tracing.record(
                "bridge.gateway",
                "gateway.fanout",
                fragment_traceparent(raw),
                started,
                {
                    "bridge.topic": feed.topic,
                    "bridge.event_id": id_bytes.decode(),
                    "bridge.groups": len(feed.groups),
                    "bridge.deliveries": n,
                    "bridge.live": live,
                },
                kind=tracing.SpanKind.CONSUMER,
            )
