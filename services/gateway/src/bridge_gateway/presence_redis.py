"""Presence across replicas through Redis: the thin I/O shell around :mod:`presence`.

Each replica keeps, per topic, its visible members in one hash
(`Channels.presence_members`, fields `conn` → entry JSON plus `#epoch`/`#seq`) whose TTL
is its *lease*, and its name in the topic's index (`Channels.presence_index`, scored by
the lease's deadline on the Redis clock). Every write is one script call that changes the
hash, renews the lease and publishes the change (`Channels.presence_live`) with the
hash's epoch and sequence number — all under the topic's hash tag, so one slot on a
cluster. Every heartbeat the lease is renewed; a hash Redis no longer has (restart, data
loss) is written again whole under a new epoch, so presence rebuilds itself from each
replica's own state.

Watchers of a topic apply published changes in sequence order; a missed one (gap, new
epoch, pub/sub reconnect) makes the replica read that hash whole. Twice a heartbeat the
index is read (deadlines, epochs, sequence numbers; whole lists only where they differ),
so a replica that died without a word is dropped when its lease runs out: at most
`LEASE_FACTOR` heartbeats after its last renewal. Frames and writes go out at most once
per topic per :data:`~presence.BATCH_INTERVAL`.

Per replica a summary hash (`Channels.presence_replica`: open connections and
subscriptions per topic, listed or hidden) under the same lease is what the metrics API
counts live connections from.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from bridge_common.channels import Channels
from bridge_common.db import Backoff
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis, is_cluster
from redis.exceptions import RedisError

from . import metrics
from .clients import ws_text_frame
from .presence import (
    BATCH_INTERVAL,
    Member,
    TopicView,
    Writes,
    encode_frame,
    identity_from_claims,
    listing,
    make_member,
    member_from_entry,
)

if TYPE_CHECKING:
    from .clients import Client

log = get_logger(__name__)

#: a lease lasts this many heartbeats (renewed every one): a replica that stops renewing
#: is dropped by the others within LEASE_FACTOR heartbeats (< 2) plus one batch interval
LEASE_FACTOR = 1.75
#: Redis calls presence runs at once
CONCURRENCY = 16
#: clock offset samples kept (reads of watched topics; twice a heartbeat each)
OFFSET_SAMPLES = 32
#: changes kept per topic while its first read is under way (beyond: the next read)
EARLY_CHANGES = 1000

# KEYS: members hash, index, channel. ARGV: replica, lease ms, spublish, full ("1": replace
# under epoch ARGV[5]), epoch, number of joins, then (conn, entry) pairs, then left conns.
# Returns the new sequence number, or 0 when a change arrives for a hash Redis lost.
_APPLY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local full = ARGV[4] == '1'
if full then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], '#epoch', ARGV[5])
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local epoch = redis.call('HGET', KEYS[1], '#epoch')
local seq = redis.call('HINCRBY', KEYS[1], '#seq', 1)
local n = tonumber(ARGV[6])
local joins = {}
local i = 7
for k = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  joins[#joins + 1] = ARGV[i + 1]
  i = i + 2
end
local leaves = {}
for k = i, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[k])
  leaves[#leaves + 1] = cjson.encode(ARGV[k])
end
redis.call('PEXPIRE', KEYS[1], lease)
local deadline = now + lease
redis.call('ZADD', KEYS[2], deadline, ARGV[1])
if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
local msg = '{"r":' .. cjson.encode(ARGV[1]) .. ',"e":' .. cjson.encode(epoch)
  .. ',"s":' .. seq .. ',"d":' .. string.format('%d', deadline)
  .. ',"f":' .. (full and 'true' or 'false')
  .. ',"j":[' .. table.concat(joins, ',') .. '],"l":[' .. table.concat(leaves, ',') .. ']}'
redis.call(ARGV[3] == '1' and 'SPUBLISH' or 'PUBLISH', KEYS[3], msg)
return seq
"""

# KEYS: members hash, index, channel. ARGV: replica, spublish. The replica has no member
# left on the topic: forget it and say so.
_DROP = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local msg = '{"r":' .. cjson.encode(ARGV[1])
  .. ',"e":"","s":0,"d":0,"f":true,"g":true,"j":[],"l":[]}'
redis.call(ARGV[2] == '1' and 'SPUBLISH' or 'PUBLISH', KEYS[3], msg)
return 1
"""

# KEYS: members hash, index. ARGV: replica, lease ms. 0: the hash is gone (write it again).
_RENEW = """
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: index. ARGV: members hash prefix (same hash tag), then (replica, "epoch:seq") pairs
# already known. Drops expired replicas; returns {now ms, {replica, deadline, epoch, seq
# [, HGETALL]}...}: the whole hash only where the known epoch:seq differs.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local known = {}
for i = 2, #ARGV, 2 do known[ARGV[i]] = ARGV[i + 1] end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
for _, r in ipairs(expired) do
  redis.call('DEL', ARGV[1] .. r)
  redis.call('ZREM', KEYS[1], r)
end
local out = {now}
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  local r = live[i]
  local key = ARGV[1] .. r
  local meta = redis.call('HMGET', key, '#epoch', '#seq')
  if meta[1] and meta[2] then
    if known[r] == meta[1] .. ':' .. meta[2] then
      out[#out + 1] = {r, live[i + 1], meta[1], meta[2]}
    else
      out[#out + 1] = {r, live[i + 1], meta[1], meta[2], redis.call('HGETALL', key)}
    end
  end
end
return out
"""

# KEYS: replica summary hash, replicas index. ARGV: replica, lease ms, then field/value
# pairs. Replaces the summary and renews its lease.
_SUMMARY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], lease)
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
return 1
"""


class _Change(msgspec.Struct):
    """A published change of one replica's members on a topic."""

    r: str
    e: str
    s: int
    d: int
    f: bool = False
    g: bool = False
    j: list[msgspec.Raw] = []
    l: list[str] = []  # noqa: E741 - wire name


_change_decoder = msgspec.json.Decoder(_Change)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _members(flat: list[Any]) -> list[Member]:
    """Members from HGETALL's flat field/value list (meta fields skipped)."""
    out: list[Member] = []
    for i in range(0, len(flat) - 1, 2):
        field = _text(flat[i])
        if field.startswith("#"):
            continue
        value = flat[i + 1]
        m = member_from_entry(value if isinstance(value, bytes) else str(value).encode())
        if m is not None:
            out.append(m)
    return out


@dataclass(slots=True)
class _Conn:
    """A client's presence: its connection id and the topics it is on."""

    conn: str
    visible: bool
    info: bytes | None
    topics: set[str]


@dataclass(frozen=True, slots=True)
class TopicPresence:
    """One read of a topic's presence over every replica (`GET /presence/{topic}`)."""

    entries: list[bytes]
    connections: int
    subs: int
    truncated: bool


class PresenceUnavailable(Exception):
    """Redis did not answer a presence read."""


class PresenceTracker:
    """Joins, leaves and watchers of this replica; Redis reads and writes (module doc)."""

    def __init__(
        self,
        redis: AnyRedis,
        pubsub_client: AnyRedis,
        channels: Channels,
        *,
        cap: int,
        max_info_bytes: int,
        heartbeat: float,
        connections: Callable[[], int],
    ) -> None:
        self.redis = redis
        self.pubsub_client = pubsub_client
        self.channels = channels
        self.cap = cap
        self.max_info_bytes = max_info_bytes
        self.heartbeat = heartbeat
        self.lease_ms = max(1, int(heartbeat * LEASE_FACTOR * 1000))
        self.connections = connections
        self.cluster = is_cluster(redis)
        self.replica = "gateway-" + secrets.token_hex(6)
        self.views: dict[str, TopicView] = {}
        self.watchers: dict[str, set[Client]] = {}
        self._new_watchers: dict[str, list[Client]] = {}
        self._conns: dict[Client, _Conn] = {}
        self._apply = redis.register_script(_APPLY)
        self._drop = redis.register_script(_DROP)
        self._renew = redis.register_script(_RENEW)
        self._read = redis.register_script(_READ)
        self._summary = redis.register_script(_SUMMARY)
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._ps: Any = None
        self._resync: set[str] = set()
        self._poke = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._redis_ok = True
        self._write_backoff = Backoff(base=BATCH_INTERVAL, cap=2.0)
        self._write_after = 0.0
        #: Redis clock minus the loop's clock (s), see `_clock`
        self._offset = 0.0
        self._offsets: deque[float] = deque(maxlen=OFFSET_SAMPLES)
        #: changes that arrived while a watched topic's first read was under way
        self._early: dict[str, list[_Change]] = {}

    def bind(self, replica: str) -> None:
        """Use the service's instance id as the replica name (before `run`)."""
        self.replica = replica
        for view in self.views.values():
            view.replica = replica

    # -- joins and leaves (called by sessions; never await) -------------------------------
    def _view(self, topic: str) -> TopicView:
        view = self.views.get(topic)
        if view is None:
            view = self.views[topic] = TopicView(topic, self.replica, self.cap)
        return view

    def join(self, client: Client, topic: str, *, watch: bool) -> None:
        """`client`'s subscription to `topic` is live; `watch`: send it presence frames."""
        c = self._conns.get(client)
        if c is None:
            p = client.principal
            ident = identity_from_claims(
                {"presence": p.presence, "info": p.info}, self.max_info_bytes
            )
            if ident.info_dropped:
                metrics.PRESENCE_INFO_DROPPED.inc()
                log.warning("presence.info_too_large", sub=p.sub, limit=self.max_info_bytes)
            c = self._conns[client] = _Conn(
                secrets.token_urlsafe(12), ident.visible, ident.info, set()
            )
        view = self._view(topic)
        if topic not in c.topics:
            c.topics.add(topic)
            if c.visible:
                view.local_join(make_member(c.conn, client.principal.sub, c.info))
            else:
                view.hidden += 1
        if watch:
            self._watch(topic, client)
        else:
            self._unwatch(topic, client)

    def leave(self, client: Client, topic: str) -> None:
        c = self._conns.get(client)
        if c is None or topic not in c.topics:
            return
        c.topics.discard(topic)
        view = self.views.get(topic)
        if view is not None:
            if c.visible:
                view.local_leave(c.conn)
            else:
                view.hidden = max(0, view.hidden - 1)
        self._unwatch(topic, client)

    def forget(self, client: Client) -> None:
        """The connection is gone (after its sessions left every topic)."""
        c = self._conns.get(client)
        if c is None:
            return
        for topic in list(c.topics):
            self.leave(client, topic)
        del self._conns[client]

    def _watch(self, topic: str, client: Client) -> None:
        watchers = self.watchers.setdefault(topic, set())
        if client in watchers:
            return
        first = not watchers
        watchers.add(client)
        self._new_watchers.setdefault(topic, []).append(client)
        if first:
            self._spawn(self._start_watch(topic))

    def _unwatch(self, topic: str, client: Client) -> None:
        watchers = self.watchers.get(topic)
        if watchers is None or client not in watchers:
            return
        watchers.discard(client)
        if watchers:
            return
        del self.watchers[topic]
        self._new_watchers.pop(topic, None)
        view = self.views.get(topic)
        if view is not None:
            # nobody here reads the other replicas' lists any more: stop following them
            view.synced = False
            for name in list(view.replicas):
                view.remote_gone(name)
        self._spawn(self._stop_watch(topic))

    # -- reads ----------------------------------------------------------------------------
    async def read(self, topic: str) -> TopicPresence:
        """Every replica's members of `topic` now (this replica's from memory)."""
        try:
            async with self._limit:
                raw = await self._read(
                    keys=[self.channels.presence_index(topic)],
                    args=[self.channels.presence_members_prefix(topic)],
                )
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(exc) or type(exc).__name__) from exc
        view = self.views.get(topic)
        local = list(view.local.values()) if view is not None else []
        members: list[Member] = list(local)
        for entry in raw[1:]:
            if _text(entry[0]) == self.replica or len(entry) < 5:
                continue
            members.extend(_members(entry[4]))
        entries, n, subs, truncated = listing(members, self.cap)
        return TopicPresence(entries, n, subs, truncated)

    async def _poll(self, topic: str) -> None:
        """Bring the other replicas' lists of a watched topic up to date."""
        view = self.views.get(topic)
        if view is None or topic not in self.watchers:
            return
        args: list[str] = [self.channels.presence_members_prefix(topic)]
        for name, at in view.remote_known():
            args += [name, at]
        async with self._limit:
            raw = await self._read(keys=[self.channels.presence_index(topic)], args=args)
        offset = self._clock(int(raw[0]) / 1000.0 - asyncio.get_running_loop().time())
        if self.views.get(topic) is not view or topic not in self.watchers:
            return
        for entry in raw[1:]:
            name = _text(entry[0])
            if name == self.replica:
                continue
            deadline = float(entry[1]) / 1000.0 - offset
            epoch, seq = _text(entry[2]), int(entry[3])
            if len(entry) > 4:
                view.remote_full(name, epoch, seq, deadline, _members(entry[4]))
            elif not view.remote_seen(name, epoch, seq, deadline):
                self._resync.add(topic)
        view.synced = True
        for ch in self._early.pop(topic, ()):
            self._apply_change(topic, view, ch)

    def _clock(self, sample: float) -> float:
        """Redis clock minus the loop's, from a read's Redis time and the moment its answer
        was handled. A busy loop handles answers late, which only lowers a sample, and a
        low offset puts lease deadlines late: the largest recent sample is the closest —
        never early (no false leaves), and not stretched by one slow answer."""
        self._offsets.append(sample)
        self._offset = max(self._offsets)
        return self._offset

    # -- watching (pub/sub) ---------------------------------------------------------------
    async def _subscribe(self, ps: Any, channels: list[str]) -> None:
        if self.cluster:
            await ps.ssubscribe(*channels)
        else:
            await ps.subscribe(*channels)

    async def _start_watch(self, topic: str) -> None:
        ps = self._ps
        if ps is not None:
            try:
                await self._subscribe(ps, [self.channels.presence_live(topic)])
            except (RedisError, OSError) as exc:
                log.warning("presence.subscribe_failed", topic=topic, error=str(exc))
                return  # the listener reconnects and subscribes every watched topic
        self._resync.add(topic)
        self._poke.set()

    async def _stop_watch(self, topic: str) -> None:
        ps = self._ps
        if ps is None or topic in self.watchers:
            return
        channel = self.channels.presence_live(topic)
        with contextlib.suppress(RedisError, OSError):
            if self.cluster:
                await ps.sunsubscribe(channel)
            else:
                await ps.unsubscribe(channel)

    def _on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("type") not in ("message", "smessage"):
            return
        data = msg.get("data")
        channel = _text(msg.get("channel") or b"")
        topic = _topic_of(channel)
        view = self.views.get(topic) if topic else None
        if view is None or topic not in self.watchers or not isinstance(data, bytes):
            return
        try:
            ch = _change_decoder.decode(data)
        except msgspec.MsgspecError:
            log.warning("presence.bad_message", topic=topic)
            return
        if ch.r == self.replica:
            return
        if ch.g:
            view.remote_gone(ch.r)
            return
        if not view.synced:
            early = self._early.setdefault(topic, [])
            if len(early) < EARLY_CHANGES:
                early.append(ch)
            return  # applied after the first read, which may not include it
        self._apply_change(topic, view, ch)

    def _apply_change(self, topic: str, view: TopicView, ch: _Change) -> None:
        deadline = ch.d / 1000.0 - self._offset
        joins = [m for m in (member_from_entry(bytes(j)) for j in ch.j) if m is not None]
        if ch.f:
            view.remote_full(ch.r, ch.e, ch.s, deadline, joins, published=True)
        elif not view.remote_diff(ch.r, ch.e, ch.s, deadline, joins, ch.l):
            self._resync.add(topic)
            self._poke.set()

    async def _listen(self, stop: asyncio.Event) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while not stop.is_set():
            ps: Any = None
            try:
                if self.cluster:
                    await self.pubsub_client.initialize()
                ps = self.pubsub_client.pubsub()
                if not self.cluster:
                    await ps.connect()
                topics = list(self.watchers)
                if topics:
                    await self._subscribe(ps, [self.channels.presence_live(t) for t in topics])
                self._ps = ps
                # whatever was published while we were away: read the lists again
                self._resync.update(topics)
                self._poke.set()
                backoff.reset()
                while not stop.is_set():
                    if self.cluster:
                        if not ps.shard_channels:
                            await asyncio.sleep(0.1)
                            continue
                        msg = await ps.get_sharded_message(timeout=1.0)
                    else:
                        if not ps.subscribed:
                            await asyncio.sleep(0.1)
                            continue
                        msg = await ps.get_message(timeout=1.0)
                    if msg is not None:
                        try:
                            self._on_message(msg)
                        except Exception:  # a presence bug must not stop event delivery
                            log.exception("presence.message_failed")
            except (RedisError, OSError) as exc:
                log.warning("presence.redis_lost", error=str(exc) or type(exc).__name__)
            finally:
                self._ps = None
                if ps is not None:
                    with contextlib.suppress(Exception):
                        await ps.aclose()
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.next_delay())

    async def _reconcile(self, stop: asyncio.Event) -> None:
        """Read each watched topic twice a heartbeat, and at once where a change was
        missed or a watch started."""
        loop = asyncio.get_running_loop()
        interval = self.heartbeat / 2
        next_full = loop.time() + interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), max(0.0, next_full - loop.time()))
            self._poke.clear()
            if loop.time() >= next_full:
                topics = set(self.watchers)
                next_full = loop.time() + interval
            else:
                topics = set(self._resync)
            self._resync.difference_update(topics)
            failed = await self._each(topics, self._poll)
            if failed:
                self._resync.update(failed)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                self._poke.set()

    # -- writing --------------------------------------------------------------------------
    async def _each(
        self, topics: Iterable[str], fn: Callable[[str], Coroutine[Any, Any, None]]
    ) -> set[str]:
        """Run `fn(topic)` for each topic at once; return the topics Redis failed."""
        topics = list(topics)
        results = await asyncio.gather(*(fn(t) for t in topics), return_exceptions=True)
        failed: set[str] = set()
        for topic, result in zip(topics, results, strict=True):
            if isinstance(result, RedisError | OSError):
                failed.add(topic)
                log.warning("presence.redis_failed", topic=topic, error=str(result))
            elif isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                log.error("presence.failed", topic=topic, error=repr(result))
                failed.add(topic)
        return failed

    async def _write(self, topic: str, view: TopicView, w: Writes | None, drop: bool) -> None:
        keys = [
            self.channels.presence_members(topic, self.replica),
            self.channels.presence_index(topic),
            self.channels.presence_live(topic),
        ]
        spublish = "1" if self.cluster else "0"
        try:
            async with self._limit:
                if drop:
                    await self._drop(keys=keys, args=[self.replica, spublish])
                    view.written = False
                    return
                assert w is not None
                args: list[str | bytes] = [
                    self.replica,
                    str(self.lease_ms),
                    spublish,
                    "1" if w.full else "0",
                    secrets.token_hex(4),
                    str(len(w.joins)),
                ]
                for m in w.joins:
                    args += [m.conn, m.entry]
                args += w.leaves
                seq = await self._apply(keys=keys, args=args)
        except BaseException:
            if w is not None:
                view.write_failed(w)
            else:
                view.written = True
            raise
        if int(seq) == 0:
            view.write_failed(w)  # Redis lost our hash: write it whole next time
        else:
            view.written = True
            metrics.PRESENCE_WRITES.inc()

    def _tick(self) -> list[Coroutine[Any, Any, None]]:
        """One batch: frames to watchers (encoded once per topic), writes to do."""
        now = asyncio.get_running_loop().time()
        writes: list[Coroutine[Any, Any, None]] = []
        may_write = self._redis_ok or now >= self._write_after
        for topic, view in list(self.views.items()):
            watchers = self.watchers.get(topic)
            if view.synced and self._redis_ok and view.replicas:
                view.expire(now)
            frame = view.take_frame()
            # a watcher's first frame is the whole list, once the other replicas' are read;
            # until then it gets no changes either
            waiting = self._new_watchers.get(topic)
            fresh = self._new_watchers.pop(topic, None) if view.synced else None
            if frame is not None and watchers:
                data = encode_frame(topic, frame)
                ws_frame = ws_text_frame(data)
                skip = set(waiting or ())
                for client in watchers:
                    if client not in skip:
                        client.send_shared(data, ws_frame)
                metrics.PRESENCE_FRAMES.inc()
            if fresh and watchers:
                data = encode_frame(topic, view.full_frame())
                ws_frame = ws_text_frame(data)
                for client in fresh:
                    if client in watchers:
                        client.send_shared(data, ws_frame)
            if may_write:
                if not view.local:
                    view.take_writes()  # nothing to keep: leaves are covered by the drop
                    if view.written:
                        writes.append(self._write(topic, view, None, drop=True))
                else:
                    w = view.take_writes()
                    if w is not None:
                        writes.append(self._write(topic, view, w, drop=False))
            if view.idle and not watchers:
                del self.views[topic]
        return writes

    async def _flush(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                writes = self._tick()
            except Exception:  # a presence bug must not stop event delivery
                log.exception("presence.tick_failed")
                writes = []
            if writes:
                results = await asyncio.gather(*writes, return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                for r in errors:
                    if isinstance(r, asyncio.CancelledError):
                        raise r
                    if not isinstance(r, RedisError | OSError):
                        log.error("presence.write_failed", error=repr(r))
                if errors:
                    if self._redis_ok:
                        log.warning("presence.redis_write_failed", error=str(errors[0]))
                    self._redis_ok = False
                    self._write_after = loop.time() + self._write_backoff.next_delay()
                else:
                    self._redis_ok = True
                    self._write_backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), max(0.0, BATCH_INTERVAL - (loop.time() - started))
                )

    async def _renew_one(self, topic: str) -> None:
        view = self.views.get(topic)
        if view is None or not view.written:
            return
        async with self._limit:
            ok = await self._renew(
                keys=[
                    self.channels.presence_members(topic, self.replica),
                    self.channels.presence_index(topic),
                ],
                args=[self.replica, str(self.lease_ms)],
            )
        if int(ok) == 0:
            view.written = False
            view.rewrite = True
            log.info("presence.rebuild", topic=topic)

    async def _write_summary(self) -> None:
        args = [self.replica, str(self.lease_ms), "#connections", str(self.connections())]
        for topic, view in self.views.items():
            if view.local_subscriptions:
                args += [f"t:{topic}", str(view.local_subscriptions)]
        async with self._limit:
            await self._summary(
                keys=[
                    self.channels.presence_replica(self.replica),
                    self.channels.presence_replicas,
                ],
                args=args,
            )

    async def _renew_all(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            written = [t for t, v in self.views.items() if v.written]
            await self._each(written, self._renew_one)
            try:
                await self._write_summary()
            except (RedisError, OSError) as exc:
                log.warning("presence.summary_failed", error=str(exc))
            except Exception:
                log.exception("presence.summary_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.heartbeat)

    # -- lifecycle ------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # pragma: no cover - no loop (tests of the sync part)
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: batches every 100 ms, lease renewal every heartbeat, the
        other replicas' changes."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flush(stop), name="presence-flush")
            tg.create_task(self._renew_all(stop), name="presence-renew")
            tg.create_task(self._listen(stop), name="presence-listen")
            tg.create_task(self._reconcile(stop), name="presence-reconcile")
        for task in list(self._tasks):
            task.cancel("shutdown")
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        """Leave every topic in Redis now (the others see the leaves at once rather than
        when the lease runs out)."""
        topics = [t for t, v in self.views.items() if v.written]

        async def drop(topic: str) -> None:
            await self._write(topic, self.views[topic], None, drop=True)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._each(topics, drop), 2.0)
        with contextlib.suppress(TimeoutError, RedisError, OSError):
            await asyncio.wait_for(self._drop_summary(), 1.0)

    async def _drop_summary(self) -> None:
        await self.redis.delete(self.channels.presence_replica(self.replica))
        await self.redis.zrem(self.channels.presence_replicas, self.replica)

    def status(self) -> dict[str, Any]:
        return {"presence_topics": len(self.views), "presence_watched": len(self.watchers)}


def _topic_of(channel: str) -> str | None:
    """The topic of a `presence_live` channel name (`ns:{topic}:presence-live`)."""
    start = channel.find(":{")
    end = channel.rfind("}:presence-live")
    if start < 0 or end <= start:
        return None
    return channel[start + 2 : end]
