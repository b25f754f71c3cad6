"""The outbox relay: the leader moves committed outbox rows into the PostgreSQL history and
then into Redis, in seq order.

Delivery guarantee: every committed change becomes exactly one event, with one id for
life. A batch is moved outbox → history in ONE transaction that also advances each topic's
last id (ids are assigned here, not by Redis); only then is it appended to Redis with
those explicit ids. A crash or a Redis outage between the two leaves events in the history
that Redis lacks: the relay re-publishes every history row above the topic's published
mark before it moves anything else (on taking the lead, and after every failed publish),
and the publish script skips ids Redis already holds — so nothing is lost and nothing is
duplicated. When Redis has lost data (the stream is missing or ends below the id last
published), the script marks the loss on the stream for the readers, who then fill the gap
from the history (see `bridge_common.redis`).

One connection per instance holds the leader lock, LISTENs for the wake-up NOTIFY and runs
the outbox and history queries; a standby keeps retrying the lock on its own connection.
NOTIFY only shortens the wait: the relay always catches up by query — on taking the lead
(also after every reconnect) and every `poll_interval` without a wake-up. The leader also
keeps the history's hourly partitions: created ahead, dropped past the retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from bridge_common import tracing
from bridge_common.channels import OUTBOX_NOTIFY_CHANNEL, Channels, InvalidTopic, check_topic
from bridge_common.db import Backoff, connect_with_backoff, keepalive_conninfo
from bridge_common.events import event_fragment_raw, event_fragment_too_large
from bridge_common.history import Position, event_meta, format_position, parse_position
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis, RelayPublisher
from psycopg import sql
from psycopg.conninfo import make_conninfo
from redis.exceptions import RedisError

from . import leader
from .history import HistoryStore, Ids
from .metrics import RelayMetrics
from .outbox import Moves, Outbox, OutboxRow
from .settings import Settings

log = get_logger("bridge_notifier.relay")

APPLICATION_NAME = "bridge-notifier"

#: a connection that lasted this long (s) was healthy: the next reconnect starts fast
_HEALTHY_SESSION = 30.0

#: at most one outbox VACUUM this often (s): the statistics lag behind a finished one
_VACUUM_SPACING = 30.0

#: history partitions are created ahead and dropped past the retention this often (s)
_MAINTAIN_EVERY = 60.0

#: what a Redis outage looks like from redis-py
REDIS_DOWN = (RedisError, OSError, TimeoutError)


class RedisUnavailable(Exception):
    """Publishing failed; the batch stays in the outbox and is retried after a pause."""


#: a fresh plan for every relay statement: a generic plan cached while the outbox was
#: near-empty (seq scan + sort) costs a full scan per batch once a backlog builds up —
#: measured 0.3-3 s a batch under a bulk writer, against ~50 ms with a custom plan
_PLAN_OPTIONS = "-c plan_cache_mode=force_custom_plan"


def relay_conninfo(dsn: str) -> str:
    """The source DSN plus a recognisable application name and TCP keepalives on both
    ends, so a dead peer is noticed within seconds even while the connection is idle
    (PostgreSQL drops a leader whose host vanished within ~11 s, releasing the lock for
    the standby); statements get custom plans (`_PLAN_OPTIONS`)."""
    return keepalive_conninfo(dsn, application_name=APPLICATION_NAME, options=_PLAN_OPTIONS)


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


#: (event id, fragment, gateway-only meta)
Item = tuple[str, bytes, bytes]


def _chunks(items: list[Item], max_bytes: int) -> Iterator[list[Item]]:
    """Split a topic's events so one script call carries at most `max_bytes` (≥ 1 event)."""
    chunk: list[Item] = []
    size = 0
    for item in items:
        n = len(item[1]) + len(item[2]) + 28
        if chunk and size + n > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += n
    if chunk:
        yield chunk


class _Batch:
    """One outbox batch with its ids: what the move statement writes and what is published."""

    __slots__ = ("moves", "by_topic", "max_ms", "committed", "traceparents")

    def __init__(self) -> None:
        self.moves = Moves()
        self.by_topic: dict[str, list[Item]] = {}
        self.max_ms = 0
        #: per topic, each event's commit time (s since the epoch): the commit → publish lag
        self.committed: dict[str, list[float]] = {}
        #: the traceparents the batch's rows carry (the publish span links to them)
        self.traceparents: list[str] = []


class Relay:
    """The notifier's one worker: elect, then relay until stopped (see module docstring)."""

    def __init__(self, settings: Settings, redis: AnyRedis, metrics: RelayMetrics) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.channels = Channels(settings.namespace)
        self.publisher = RelayPublisher(redis, self.channels, maxlen=settings.stream_maxlen)
        self.conninfo = relay_conninfo(settings.source_dsn)
        self._next_stats = 0.0
        self._next_topics = 0.0
        self._next_maintain = 0.0
        self._dead_tuples = 0
        self._next_vacuum = 0.0
        self._registered: list[str] = []
        self._vacuum: asyncio.Task[None] | None = None
        #: the leader measures backlog and lag on a connection of its own: a count(*)
        #: over a large backlog takes ~0.5 s and must not hold up the relay's statements
        self._stats_task: asyncio.Task[None] | None = None
        self._stats_conn: psycopg.AsyncConnection[Any] | None = None
        self.ids = Ids()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._elect_and_relay(stop)
        finally:
            await self._stop_vacuum()

    async def _stop_vacuum(self) -> None:
        for task in (self._vacuum, self._stats_task):
            if task is not None and not task.done():
                task.cancel("shutdown")
                await asyncio.wait([task])
        if self._stats_conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._stats_conn.close()
            self._stats_conn = None

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
        store = HistoryStore(conn)
        # the state in PostgreSQL is the truth: whatever a previous leader (or this one,
        # before a failed statement) held in memory may not have been committed
        self.ids = await store.load()
        self._next_maintain = 0.0
        self.metrics.set_leader(True)
        log.info("leader.acquired", commit_ts=outbox.commit_ts, topics=len(self.ids.topics))
        self._next_topics = 0.0
        redis_backoff = Backoff(base=0.1, cap=5.0)
        while not stop.is_set():
            await self._topics_if_due(outbox)
            await self._maintain_if_due(store)
            try:
                caught_up = await self._drain(outbox, store, stop)
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
                self.publisher.forget_topics()
                redis_backoff.reset()
            await self._stats_if_due(outbox)
            if caught_up:
                await store.save_published(self.ids, self.ids.dirty())
                self._vacuum_if_due()
            if caught_up and not stop.is_set():
                # a wake-up NOTIFY, or the fallback poll
                async for _ in conn.notifies(timeout=self.settings.poll_interval, stop_after=1):
                    pass
        await store.save_published(self.ids, self.ids.dirty())

    # -- the relay ------------------------------------------------------------------------
    async def _drain(self, outbox: Outbox, store: HistoryStore, stop: asyncio.Event) -> bool:
        """Relay batches until the outbox is empty; True when caught up, False when stopped.

        First whatever the history holds beyond what Redis was given (a crash or a failed
        publish before) is published again. Then, per batch: ids assigned, the move
        statement commits the batch into the history and reads the next batch, and the
        batch is published while the next one is moved — PostgreSQL and Redis work at the
        same time, while publishes still go strictly in id order, one after the other.
        """
        await self._catch_up(store)
        limit = self.settings.batch_size
        rows = await outbox.fetch(limit, prune=[])
        publishing: asyncio.Future[None] | None = None
        failed: BaseException | None = None
        try:
            while rows and not stop.is_set():
                started = time.perf_counter()
                batch = await self._assign(rows)
                if batch.max_ms >= store.ready_until:
                    await store.ensure_partitions(int(time.time() * 1000), batch.max_ms)
                topics = list(batch.by_topic)
                rows = await outbox.move(batch.moves, limit, self.ids.state_rows(topics))
                if publishing is not None:
                    await _settle(publishing)  # RedisUnavailable: caught up from the history
                publishing = asyncio.ensure_future(self._publish_batch(batch))
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
                await self._stats_if_due(outbox)
        finally:
            if publishing is not None:
                await asyncio.wait([publishing])  # never leave a script call midway
                failed = publishing.exception()
        if publishing is not None and failed is not None:
            raise failed
        return not stop.is_set()

    async def _assign(self, rows: Sequence[OutboxRow]) -> _Batch:
        """Give each row its event id (per topic, in seq order) and its fragment. The hot
        loop of the relay: kept to plain local operations per row."""
        batch = _Batch()
        moves = batch.moves
        seqs, mss, ns, sizes = moves.seqs, moves.ms, moves.n, moves.sizes
        limit = self.settings.max_event_bytes
        small = limit // 4  # a str of at most this many characters fits in `limit` bytes
        now_ms = int(time.time() * 1000)
        topics = self.ids.topics
        # new topics first (this may need Redis): no id is assigned unless all can be
        for topic in {r.topic for r in rows}.difference(topics):
            if _valid_topic(topic):
                await self._start_topic(topic)
        assign = self.ids.assign
        by_topic = batch.by_topic
        committed = batch.committed
        traceparents = batch.traceparents
        for r in rows:
            seqs.append(r.seq)
            topic = r.topic
            if topic not in topics:
                # cannot be a stream name; deleted with the batch, never blocks the queue
                self.metrics.rejected.inc()
                log.error("outbox.row_rejected", seq=r.seq, topic=topic, reason="invalid topic")
                mss.append(None)
                ns.append(None)
                sizes.append(None)
                continue
            pos = assign(topic, now_ms)
            mss.append(pos[0])
            ns.append(pos[1])
            payload = r.payload
            size = None if len(payload) <= small else _size_over(payload, limit)
            sizes.append(size)
            tp = r.traceparent
            if tp is not None:
                traceparents.append(tp)
            if size is None:
                frag = event_fragment_raw(r.op, r.key, payload, r.ts, tp)
                meta = event_meta(r.txid, r.prior)
            else:
                meta = event_meta(r.txid, None)
                self.metrics.too_large.inc()
                log.warning("outbox.row_too_large", topic=topic, key=r.key[:200], bytes=size)
                frag = event_fragment_too_large(r.op, r.key, size, r.ts, tp)
            items = by_topic.get(topic)
            if items is None:
                items = by_topic[topic] = []
                committed[topic] = []
            items.append((f"{pos[0]}-{pos[1]}", frag, meta))
            committed[topic].append(r.committed)
        batch.max_ms = max((m for m in mss if m is not None), default=0)
        return batch

    async def _start_topic(self, topic: str) -> None:
        """A topic the history does not know yet starts its ids above whatever Redis
        holds on it (ids assigned by Redis before the history existed)."""
        try:
            last = await self.publisher.last_id(topic)
        except REDIS_DOWN as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        floor: Position = (0, 0)
        if last is not None:
            with contextlib.suppress(ValueError):
                floor = parse_position(last)
        self.ids.start(topic, floor)

    async def _catch_up(self, store: HistoryStore) -> None:
        """Publish the history rows above each topic's published mark (Redis skips the
        ones it holds): the in-flight batches of a crashed leader or a failed publish."""
        behind = self.ids.behind()
        if not behind:
            return
        total = 0
        for topic in behind:
            st = self.ids.topics[topic]
            while st.pub < st.last:
                rows = await store.read_after(topic, st.pub, self.settings.batch_size)
                if not rows:
                    # the history ends before the recorded last id: cannot happen while
                    # both are written in one transaction; never loop on it
                    log.error("history.shorter_than_state", topic=topic)
                    self.ids.published(topic, st.last)
                    break
                items = [(format_position(pos), frag, meta) for pos, frag, meta in rows]
                await self._publish({topic: items})
                total += len(items)
        await store.save_published(self.ids, self.ids.dirty())
        self.metrics.republished.inc(total)
        log.info("history.republished", events=total, topics=len(behind))

    async def _publish_batch(self, batch: _Batch) -> None:
        """Publish a moved batch, then record each event's commit → publish lag. Traced:
        one `relay.publish` span per application trace among the rows (see
        `bridge_common.tracing.events_span`)."""
        if tracing.enabled():
            events = sum(len(v) for v in batch.by_topic.values())
            with tracing.events_span(
                "bridge.notifier",
                "relay.publish",
                batch.traceparents,
                {"bridge.events": events, "bridge.topics": sorted(batch.by_topic)},
                untraced=len(batch.traceparents) < events,
                kind=tracing.SpanKind.PRODUCER,
            ):
                await self._publish(batch.by_topic)
        else:
            await self._publish(batch.by_topic)
        self.metrics.observe_commit_lag(batch.committed, time.time())

    async def _publish(self, by_topic: dict[str, list[Item]]) -> None:
        """Publish each topic's events in id order; advance the published marks."""
        for topic, items in by_topic.items():
            for chunk in _chunks(items, self.settings.max_publish_bytes):
                prev = format_position(self.ids.topics[topic].pub)
                try:
                    lost, added = await self.publisher.publish(
                        topic, prev, [(i, f) for i, f, _ in chunk], [m for _, _, m in chunk]
                    )
                except REDIS_DOWN as exc:
                    raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
                self.ids.published(topic, parse_position(chunk[-1][0]))
                self.metrics.count_published(topic, added)
                if added < len(chunk):
                    self.metrics.duplicates.inc(len(chunk) - added)
                    log.info("outbox.duplicates_dropped", topic=topic, count=len(chunk) - added)
                if lost:
                    self.metrics.redis_data_lost.inc()
                    log.warning("redis.data_lost", topic=topic, missing_up_to=prev)

    async def _maintain_if_due(self, store: HistoryStore) -> None:
        """Partitions for the coming hours; drop the ones past the retention."""
        now = time.monotonic()
        if now < self._next_maintain:
            return
        self._next_maintain = now + _MAINTAIN_EVERY
        now_ms = int(time.time() * 1000)
        await store.ensure_partitions(now_ms, now_ms)
        cutoff = now_ms - int(self.settings.history_retention * 1000)
        try:
            dropped = await store.drop_before(cutoff)
        except psycopg.errors.LockNotAvailable:
            log.info("history.drop_postponed", reason="a reader holds the table")
            self._next_maintain = now + 5.0
            return
        if dropped:
            self.metrics.partitions_dropped.inc(dropped)
            log.info("history.partitions_dropped", count=dropped, before_ms=cutoff)

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
        if self.metrics.is_leader:
            if self._stats_task is None or self._stats_task.done():
                self._stats_task = asyncio.create_task(self._stats_aside(), name="outbox-stats")
            return
        stats = await outbox.stats([])
        self.metrics.set_stats(stats.backlog, stats.lag_seconds)
        self._dead_tuples = stats.dead_tuples

    async def _stats_aside(self) -> None:
        """The leader's measurement, on its own connection (opened on first use, opened
        again after an error); a failure only skips one measurement."""
        try:
            if self._stats_conn is None or self._stats_conn.closed:
                conninfo = make_conninfo(
                    self.conninfo, application_name=f"{APPLICATION_NAME}-stats"
                )
                self._stats_conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
            stats = await Outbox(self._stats_conn).stats([])
        except psycopg.Error as exc:
            log.warning("outbox.stats_failed", error=str(exc).strip()[:200])
            if self._stats_conn is not None:
                with contextlib.suppress(psycopg.Error):
                    await self._stats_conn.close()
                self._stats_conn = None
            return
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


async def _settle(fut: asyncio.Future[None]) -> None:
    """Await a publish to its end even when cancelled (a script call cut midway leaves
    its connection in an unknown state), then re-raise."""
    try:
        await asyncio.shield(fut)
    except asyncio.CancelledError:
        if not fut.done():
            await asyncio.wait([fut])
        raise


def _size_over(payload: str, limit: int) -> int | None:
    """The row's size in bytes when it exceeds `limit`, else None."""
    size = len(payload.encode())
    return size if size > limit else None


def _valid_topic(topic: str) -> bool:
    try:
        check_topic(topic)
    except InvalidTopic:
        return False
    return True
