"""The outbox relay: the leader moves committed outbox rows into Redis, in seq order.

Delivery guarantee: at-least-once into Redis, made idempotent by the publish script's
dedupe on the outbox sequence — so every committed change becomes exactly one event in its
topic stream. A row is deleted from the outbox only after the script has appended it;
a crash between the two re-publishes at most two batches (the one awaiting its prune and
the one in flight), which the dedupe set drops.

One connection per instance holds the leader lock, LISTENs for the wake-up NOTIFY and runs
the outbox queries; a standby keeps retrying the lock on its own connection. NOTIFY only
shortens the wait: the relay always catches up by query — on taking the lead (also after
every reconnect) and every `poll_interval` without a wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from bridge_common.channels import OUTBOX_NOTIFY_CHANNEL, Channels, InvalidTopic, check_topic
from bridge_common.db import Backoff, connect_with_backoff, keepalive_conninfo
from bridge_common.events import event_fragment_raw
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis, EventPublisher
from psycopg import sql
from psycopg.conninfo import make_conninfo
from redis.exceptions import RedisError

from . import leader
from .metrics import RelayMetrics
from .outbox import Outbox, OutboxRow
from .settings import Settings

log = get_logger("bridge_notifier.relay")

APPLICATION_NAME = "bridge-notifier"

#: a connection that lasted this long (s) was healthy: the next reconnect starts fast
_HEALTHY_SESSION = 30.0

#: at most one outbox VACUUM this often (s): the statistics lag behind a finished one
_VACUUM_SPACING = 30.0

#: what a Redis outage looks like from redis-py
REDIS_DOWN = (RedisError, OSError, TimeoutError)


class RedisUnavailable(Exception):
    """Publishing failed; the batch stays in the outbox and is retried after a pause."""


def relay_conninfo(dsn: str) -> str:
    """The source DSN plus a recognisable application name and TCP keepalives on both
    ends, so a dead peer is noticed within seconds even while the connection is idle."""
    return keepalive_conninfo(dsn, application_name=APPLICATION_NAME)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _chunks(
    items: list[tuple[int | None, bytes]], max_bytes: int
) -> Iterator[list[tuple[int | None, bytes]]]:
    """Split a topic's events so one script call carries at most `max_bytes` (≥ 1 event)."""
    chunk: list[tuple[int | None, bytes]] = []
    size = 0
    for item in items:
        n = len(item[1]) + 24
        if chunk and size + n > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


class Relay:
    """The notifier's one worker: elect, then relay until stopped (see module docstring)."""

    def __init__(self, settings: Settings, redis: AnyRedis, metrics: RelayMetrics) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.channels = Channels(settings.namespace)
        self.publisher = EventPublisher(
            redis, self.channels, maxlen=settings.stream_maxlen, dedupe_keep=settings.dedupe_keep
        )
        self.conninfo = relay_conninfo(settings.source_dsn)
        self._next_stats = 0.0
        self._next_topics = 0.0
        #: seqs of the last published batch: in Redis, pruned by the next fetch
        self._published: list[int] = []
        self._dead_tuples = 0
        self._next_vacuum = 0.0
        self._registered: list[str] = []
        self._vacuum: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._elect_and_relay(stop)
        finally:
            await self._stop_vacuum()

    async def _stop_vacuum(self) -> None:
        if self._vacuum is not None and not self._vacuum.done():
            self._vacuum.cancel("shutdown")
            await asyncio.wait([self._vacuum])

    async def _elect_and_relay(self, stop: asyncio.Event) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        while not stop.is_set():
            try:
                conn = await connect_with_backoff(self.conninfo, stop=stop, what="outbox")
            except asyncio.CancelledError:
                if stop.is_set():
                    return
                raise
            connected_at = time.monotonic()
            try:
                async with conn:
                    outbox = Outbox(conn)
                    await outbox.setup()
                    if await self._standby(conn, outbox, stop):
                        await self._lead(conn, outbox, stop)
            except psycopg.OperationalError as exc:
                self.metrics.db_reconnects.inc()
                log.warning("outbox.connection_lost", error=str(exc).strip())
            except psycopg.Error as exc:
                self.metrics.db_reconnects.inc()
                log.error("outbox.query_failed", error=str(exc).strip(), sqlstate=exc.sqlstate)
            finally:
                if self.metrics.is_leader:
                    (log.info if stop.is_set() else log.warning)("leader.released")
                self.metrics.set_leader(False)
            if time.monotonic() - connected_at > _HEALTHY_SESSION:
                backoff.reset()  # a long session ended: reconnect quickly, not at the cap
            if not stop.is_set():
                await _pause(stop, backoff.next_delay())

    async def _standby(
        self, conn: psycopg.AsyncConnection[Any], outbox: Outbox, stop: asyncio.Event
    ) -> bool:
        """Retry the leader lock every `leader_retry_interval`; True once held."""
        announced = False
        while not stop.is_set():
            if await leader.try_acquire(conn):
                return True
            if not announced:
                log.info("leader.standby", retry_every=self.settings.leader_retry_interval)
                announced = True
            await self._stats_if_due(outbox)
            await _pause(stop, self.settings.leader_retry_interval)
        return False

    async def _lead(
        self, conn: psycopg.AsyncConnection[Any], outbox: Outbox, stop: asyncio.Event
    ) -> None:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(OUTBOX_NOTIFY_CHANNEL)))
        self.metrics.set_leader(True)
        log.info("leader.acquired", commit_ts=outbox.commit_ts)
        self._next_topics = 0.0
        redis_backoff = Backoff(base=0.1, cap=5.0)
        while not stop.is_set():
            await self._topics_if_due(outbox)
            try:
                caught_up = await self._drain(outbox, stop)
            except RedisUnavailable as exc:
                delay = redis_backoff.next_delay()
                self.metrics.redis_errors.inc()
                log.warning("redis.unavailable", error=str(exc), retry_in=round(delay, 3))
                await self._stats_if_due(outbox)
                await _pause(stop, delay)
                continue
            if redis_backoff.attempt:
                log.info("redis.recovered")
                self._next_topics = 0.0  # a restarted Redis may have lost the topic set
                redis_backoff.reset()
            await self._stats_if_due(outbox)
            if caught_up:
                self._vacuum_if_due()
            if caught_up and not stop.is_set():
                # a wake-up NOTIFY, or the fallback poll
                async for _ in conn.notifies(timeout=self.settings.poll_interval, stop_after=1):
                    pass
        if self._published:
            await outbox.delete(self._published)
            self._published = []

    # -- the relay ------------------------------------------------------------------------
    async def _drain(self, outbox: Outbox, stop: asyncio.Event) -> bool:
        """Relay batches until a short one; True when caught up, False when stopped.

        While a full batch is being published, the next one is read (excluding it) and
        the batch before it pruned, in one round trip: PostgreSQL and Redis work at the
        same time. Batches are still published strictly one after the other, in the
        order they were read. The last batch before a wait is pruned on the next
        wake-up or poll, or on shutdown.
        """
        limit = self.settings.batch_size
        rows = await outbox.fetch(limit, prune=self._published)
        self._published = []
        while rows and not stop.is_set():
            started = time.perf_counter()
            seqs = [r.seq for r in rows]
            publish = asyncio.ensure_future(self._publish(rows))
            ahead = None
            if len(rows) == limit:
                ahead = asyncio.ensure_future(
                    outbox.fetch(limit, prune=self._published, exclude=seqs)
                )
            # wait for both, never cancel one midway: a cancelled query or script call
            # would leave its connection in an unknown state
            pending = [t for t in (publish, ahead) if t is not None]
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError:
                for t in pending:
                    t.cancel("relay cancelled")
                await asyncio.wait(pending)
                raise
            if ahead is not None and not ahead.exception():
                self._published = []  # pruned by the read-ahead
            publish.result()  # RedisUnavailable: this batch stays in the outbox
            self._published.extend(seqs)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)
            log.debug("outbox.published", count=len(rows), last_seq=rows[-1].seq)
            if ahead is None:
                return True
            rows = ahead.result()
            await self._stats_if_due(outbox)
        return not rows

    async def _publish(self, rows: Sequence[OutboxRow]) -> None:
        """Publish rows grouped by topic, each topic's rows in seq order."""
        by_topic: dict[str, list[tuple[int | None, bytes]]] = {}
        for r in rows:
            try:
                check_topic(r.topic)
            except InvalidTopic:
                # cannot be a stream name; pruned with the batch so it never blocks the queue
                self.metrics.rejected.inc()
                log.error("outbox.row_rejected", seq=r.seq, topic=r.topic, reason="invalid topic")
                continue
            frag = event_fragment_raw(r.op, r.key, r.payload, r.ts)
            by_topic.setdefault(r.topic, []).append((r.seq, frag))
        for topic, items in by_topic.items():
            for chunk in _chunks(items, self.settings.max_publish_bytes):
                try:
                    ids = await self.publisher.publish(topic, chunk)
                except REDIS_DOWN as exc:
                    raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
                new = sum(1 for i in ids if i is not None)
                self.metrics.count_published(topic, new)
                if new < len(ids):
                    self.metrics.duplicates.inc(len(ids) - new)
                    log.info("outbox.duplicates_dropped", topic=topic, count=len(ids) - new)

    # -- bookkeeping ----------------------------------------------------------------------
    def _vacuum_if_due(self) -> None:
        """With many dead rows in the outbox (a drained backlog), VACUUM it on a connection
        of its own, so reads stop stepping over the dead index entries now rather than at
        autovacuum's next visit."""
        after = self.settings.vacuum_after
        if not after or self._dead_tuples < after:
            return
        if self._vacuum is not None and not self._vacuum.done():
            return
        now = time.monotonic()
        if now < self._next_vacuum:
            return
        self._next_vacuum = now + _VACUUM_SPACING
        self._dead_tuples = 0
        self._vacuum = asyncio.create_task(self._run_vacuum(), name="outbox-vacuum")

    async def _run_vacuum(self) -> None:
        started = time.perf_counter()
        try:
            conninfo = make_conninfo(self.conninfo, application_name=f"{APPLICATION_NAME}-vacuum")
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            async with conn:
                await conn.execute("VACUUM bridge.outbox")
        except psycopg.Error as exc:
            # not the table's owner, or the database went away: autovacuum still runs
            log.warning("outbox.vacuum_failed", error=str(exc).strip())
            return
        log.info("outbox.vacuumed", seconds=round(time.perf_counter() - started, 3))

    async def _stats_if_due(self, outbox: Outbox) -> None:
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self.settings.stats_interval
        stats = await outbox.stats(self._published)
        self.metrics.set_stats(stats.backlog, stats.lag_seconds)
        self._dead_tuples = stats.dead_tuples

    async def _topics_if_due(self, outbox: Outbox) -> None:
        """Register every watched table's topic in `{ns}:topics` (the gateway's registry)."""
        now = time.monotonic()
        if now < self._next_topics:
            return
        topics = await outbox.watched_topics()
        valid = [t for t in topics if _valid_topic(t)]
        try:
            if valid:
                await self.redis.sadd(self.channels.topics, *valid)
        except REDIS_DOWN as exc:
            log.warning("topics.register_failed", error=str(exc))
            self._next_topics = now + 1.0
            return
        self._next_topics = now + self.settings.topics_refresh_interval
        if valid != self._registered:
            log.info("topics.registered", topics=valid)
            self._registered = valid


def _valid_topic(topic: str) -> bool:
    try:
        check_topic(topic)
    except InvalidTopic:
        return False
    return True
