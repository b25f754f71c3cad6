"""Getting notifications out: one task and one bounded queue per channel.

Delivery guarantee: **at-least-once per notification and channel, until it is
`BRIDGE_ALERTER_DELIVERY_MAX_AGE` old**. A notification is written to the Redis outbox
together with the state change that caused it (`store.AlertStore.commit`) and removed only
after its channel answered 2xx. A crash (even `kill -9`) mid-delivery leaves it in the
outbox; the next leader replays it. The price is a possible duplicate when the process dies
after the receiver got the message but before the acknowledgement was recorded; receivers
can drop those by the `X-Bridge-Delivery` header: the notification id, a UUIDv7 that is
globally unique (not a Redis counter: it never restarts after a Redis data loss and never
collides across deployments). Not by `started_at`: a repeat, and the notice after a
silence ends, carry the incident's original `started_at`.

What the outbox holds lives in Redis. After a Redis data loss (told by the epoch token
`Channels.alert_epoch` being gone) a leader that kept running still sends what it had
already queued in memory; notifications only the lost outbox held are gone (the alert
state is rebuilt, see evaluator.py).

Each channel has its own task, so a channel that keeps failing only delays itself. Failed
attempts are retried with exponential backoff and full jitter (`Retry-After` on 429/5xx
wins), every call has a timeout, and each Slack webhook URL gets at most one message per
`BRIDGE_ALERTER_SLACK_MIN_INTERVAL`. The in-memory queues are bounded; what does not fit
stays in the outbox and is picked up by the next sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import httpx
import msgspec
from bridge_common import tracing
from bridge_common.channels import ALERTS_TOPIC
from bridge_common.events import event_fragment
from bridge_common.logging import get_logger
from bridge_common.redis import EventPublisher

from . import metrics, notify
from .errors import DeliveryError
from .leader import Leadership
from .rules import ChannelConfig, RuleSet
from .settings import Settings
from .state import iso
from .store import EVENTS_CHANNEL, AlertStore, Delivery, dedupe_seq

log = get_logger("alerter.delivery")


class Dispatcher:
    """Feeds outbox entries to per-channel workers while this instance is the leader."""

    def __init__(
        self,
        settings: Settings,
        store: AlertStore,
        leadership: Leadership,
        rules: Callable[[], RuleSet],
        http: httpx.AsyncClient,
        publisher: EventPublisher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.leadership = leadership
        self.rules = rules
        self.http = http
        self.publisher = publisher
        self._queues: dict[str, asyncio.Queue[Delivery]] = {}
        self._inflight: set[str] = set()
        #: accepted and not finished: what this leader still owes, by outbox field
        self._owed: dict[str, Delivery] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._stop: asyncio.Event | None = None
        #: Slack URL → monotonic time of its last message (shared by channels with one URL)
        self._slack_last: dict[str, float] = {}
        self._slack_locks: dict[str, asyncio.Lock] = {}

    # -- feeding ----------------------------------------------------------------------------
    def submit(self, deliveries: list[Delivery]) -> None:
        """Queue freshly committed deliveries; what does not fit waits for the next sweep."""
        for d in deliveries:
            self._offer(d)

    def _offer(self, d: Delivery) -> None:
        if d.field in self._inflight or self._tg is None or self._stop is None:
            return
        if self._stop.is_set():
            return  # shutting down: it stays in the outbox for the next leader
        queue = self._queues.get(d.channel)
        if queue is None:
            queue = asyncio.Queue(self.settings.channel_queue_size)
            self._queues[d.channel] = queue
            self._tg.create_task(
                self._channel_worker(d.channel, queue, self._stop), name=f"deliver:{d.channel}"
            )
        try:
            queue.put_nowait(d)
        except asyncio.QueueFull:
            return
        self._inflight.add(d.field)
        self._owed[d.field] = d
        metrics.QUEUE_DEPTH.labels(d.channel).set(queue.qsize())

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._sweeper(stop), name="outbox-sweep")
        self._tg = None

    async def _sweeper(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await _wait_either(self.leadership.active, stop):
                return
            try:
                for d in await self.store.pending():
                    self._offer(d)
                metrics.OUTBOX.set(await self.store.outbox_size())
            except Exception as exc:  # noqa: BLE001 - Redis trouble: sweep again later
                log.warning("outbox.sweep_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.outbox_sweep_interval)

    async def restore_owed(self) -> int:
        """Redis lost the outbox: write back what this leader still owes; returns how many."""
        owed = list(self._owed.values())
        if owed:
            await self.store.requeue(owed)
        return len(owed)

    def forget_abandoned(self) -> None:
        """The outbox survived: it, not this memory, says what is owed for what is not
        being sent right now."""
        self._owed = {f: d for f, d in self._owed.items() if f in self._inflight}

    # -- sending ----------------------------------------------------------------------------
    async def _channel_worker(
        self, channel: str, queue: asyncio.Queue[Delivery], stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            d = await _get_or_stop(queue, stop)
            if d is None:
                return
            metrics.QUEUE_DEPTH.labels(channel).set(queue.qsize())
            try:
                await self._deliver(d, stop)
            except Exception:  # noqa: BLE001 - a bug in one delivery must not stop the channel
                log.exception("delivery.crashed", channel=channel, id=d.id)
            finally:
                self._inflight.discard(d.field)
                if self.leadership.is_leader:
                    self._owed.pop(d.field, None)
                # else: left for the next leader through the outbox — and kept here in
                # case Redis lost that outbox meanwhile (see `restore_owed`)

    async def _deliver(self, d: Delivery, stop: asyncio.Event) -> None:
        # A sweep may have read this entry just before an earlier copy was acknowledged;
        # the outbox is the truth about what is still owed.
        # Not pending any more because Redis lost the outbox (the epoch token is gone too):
        # this leader still holds the notification, so it sends it (at least once).
        try:
            if not await self.store.is_pending(d):
                if await self.store.epoch_intact():
                    return
                log.warning("outbox.lost_with_redis", id=d.id, channel=d.channel)
        except Exception as exc:  # noqa: BLE001 - cannot tell: send (at least once)
            log.warning("outbox.check_failed", id=d.id, channel=d.channel, error=str(exc))
        attempt = 0
        while not stop.is_set():
            if not self.leadership.is_leader:
                return  # stays in the outbox for whoever leads now
            age = time.time() - d.created_at
            if age > self.settings.delivery_max_age:
                log.error(
                    "delivery.expired",
                    channel=d.channel,
                    id=d.id,
                    rule=d.notice.rule,
                    age=round(age, 1),
                    attempts=attempt,
                )
                metrics.NOTIFICATIONS.labels(d.channel, "expired").inc()
                await self._ack(d)
                return
            try:
                with tracing.span("bridge.alerter", "alerter.deliver", _span_attributes(d)):
                    await self._attempt(d)
            except DeliveryError as exc:
                metrics.ATTEMPTS.labels(d.channel, "retry" if exc.retry else "rejected").inc()
                if not exc.retry:
                    log.error(
                        "delivery.rejected",
                        channel=d.channel,
                        id=d.id,
                        rule=d.notice.rule,
                        error=str(exc),
                    )
                    metrics.NOTIFICATIONS.labels(d.channel, "rejected").inc()
                    await self._ack(d)
                    return
                delay = self._backoff(attempt, exc.retry_after)
                attempt += 1
                log.warning(
                    "delivery.retry",
                    channel=d.channel,
                    id=d.id,
                    rule=d.notice.rule,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(exc),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            except _UnknownChannel:
                log.error("delivery.unknown_channel", channel=d.channel, id=d.id)
                metrics.NOTIFICATIONS.labels(d.channel, "dropped").inc()
                await self._ack(d)
                return
            metrics.ATTEMPTS.labels(d.channel, "ok").inc()
            metrics.NOTIFICATIONS.labels(d.channel, "delivered").inc()
            log.info(
                "delivery.sent",
                channel=d.channel,
                id=d.id,
                rule=d.notice.rule,
                state=d.notice.state,
                kind=d.kind,
                attempts=attempt + 1,
            )
            await self._ack(d)
            return

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        cap = min(self.settings.retry_max_delay, self.settings.retry_base_delay * 2**attempt)
        return random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not security

    async def _ack(self, d: Delivery) -> None:
        for _ in range(5):
            try:
                await self.store.ack(d)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying briefly; a replay is safe
                log.warning("outbox.ack_failed", id=d.id, channel=d.channel, error=str(exc))
                await asyncio.sleep(0.5)

    async def _attempt(self, d: Delivery) -> None:
        if d.channel == EVENTS_CHANNEL:
            await self._publish_event(d)
            return
        channel = self.rules().channels.get(d.channel)
        if channel is None:
            raise _UnknownChannel(d.channel)
        if channel.type == "slack":
            lock = self._slack_locks.setdefault(channel.url, asyncio.Lock())
            async with lock:
                last = self._slack_last.get(channel.url)
                if last is not None:
                    wait = last + self.settings.slack_min_interval - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                try:
                    await self._send(d, channel)
                finally:
                    self._slack_last[channel.url] = time.monotonic()
        else:
            await self._send(d, channel)

    async def _send(self, d: Delivery, channel: ChannelConfig) -> None:
        await notify.send(
            self.http,
            channel,
            d.notice,
            kind=d.kind,
            delivery_id=d.id,
            call_timeout=self.settings.http_timeout,
            allowed=self.settings.allowed,
        )

    async def _publish_event(self, d: Delivery) -> None:
        """Publish on the `alerts` topic; the notification id dedupes a replay."""
        op = "insert" if d.notice.state == "firing" else "update"
        frag = event_fragment(
            op, d.notice.fingerprint, msgspec.to_builtins(d.notice), _iso(d.created_at)
        )
        try:
            await self.publisher.publish(ALERTS_TOPIC, [(dedupe_seq(d.id), frag)])
        except Exception as exc:  # noqa: BLE001 - Redis trouble is retried like HTTP trouble
            raise DeliveryError(f"publish failed: {exc}", retry=True) from None


class _UnknownChannel(Exception):
    pass


def _span_attributes(d: Delivery) -> dict[str, str | int]:
    return {
        "bridge.rule": d.notice.rule,
        "bridge.channel": d.channel,
        "bridge.kind": d.kind,
        "bridge.delivery_id": d.id,
    }


def _iso(ts: float) -> str:
    return iso(ts) or ""


async def _wait_either(event: asyncio.Event, stop: asyncio.Event) -> bool:
    """Wait until `event` is set (True) or `stop` is (False)."""
    if event.is_set():
        return True
    a = asyncio.ensure_future(event.wait())
    b = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (a, b):
            t.cancel()
    return event.is_set() and not stop.is_set()


async def _get_or_stop(queue: asyncio.Queue[Delivery], stop: asyncio.Event) -> Delivery | None:
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None
