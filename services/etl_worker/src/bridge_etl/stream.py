"""Event mode: consume the `audit_logs` topic stream through a Redis consumer group.

Each worker is one consumer of `Channels.etl_group`. It reads new entries, loads the batch,
and XACKs only after the load committed — a crash before the XACK leaves the entries
pending, and a replay inserts nothing (the target's key), so the effect is exactly once.
Entries a dead worker left pending are taken over with XAUTOCLAIM once idle for
`claim_idle`; an entry delivered more than `max_deliveries` times (it kept killing its
worker) goes to the dead-letter stream instead of being tried again. Entries that cannot
be decoded or transformed are dead-lettered with the reason and acknowledged.

Redis may forget entries the group has not loaded yet. Every read is one Lua call that
checks the group against the stream *and* reads (`_READ_LUA`), so nothing can be trimmed
between the check and the read. A loss is detected when:

* the stream was trimmed past the group (`MAXLEN ~`): the group's position lies before
  the first retained entry and the group has read fewer entries than were trimmed
  (Redis 7 counters; when Redis cannot vouch for the group's count, a loss is assumed);
* entries pending on a dead consumer were trimmed (XAUTOCLAIM reports them deleted);
* the group or the stream is gone (`NOGROUP`: Redis restarted empty, FLUSHALL, a deleted
  or recreated stream) after this target had a group — `bridge.etl_state` row
  `stream:audit_logs` remembers that;
* the group's position or the stream's last id went *backwards* from an id this worker
  already read (failover to a replica that missed writes, a restore from an old dump).

Each detection asks the `Repair` (repair.py) to copy from the source table what the events
may have missed; consumption goes on meanwhile. Guarantee: every committed audit row whose
event was published while this target had a group reaches the target exactly once in
effect, whatever Redis loses; a loss no consumer can see (a failover that loses entries no
worker ever read) is covered by the periodic reconciliation (`BRIDGE_ETL_REPAIR_INTERVAL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
from bridge_common import tracing
from bridge_common.channels import Channels
from bridge_common.db import Backoff
from bridge_common.events import assemble_event, decode_event, fragment_traceparent
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .deadletter import Reject
from .errors import BadRow
from .sink import Sink, Stopping
from .stats import EtlStats
from .transform import TargetRow, from_row

log = get_logger(__name__)

TOPIC = "audit_logs"
ORIGIN = "stream"
Entry = tuple[bytes, dict[bytes, bytes]]
#: `bridge.etl_state` row saying this target has had a consumer group (a missing group is
#: then a loss, not a first start)
GROUP_MARKER = "stream:audit_logs"
StreamId = tuple[int, int]

# KEYS: stream; ARGV: group, consumer, count.
# Returns {-1} when the stream or the group is missing, else
# {lost (0/1), group's last-delivered id before the read, stream's last id, entries}.
# `entries-added - length` is how many entries the stream ever dropped (only trims drop
# entries of a topic stream); a group positioned before the first retained entry that has
# read fewer than that missed some. Its count is then set to what it would be had it read
# them, so the next read (here, atomically) continues consistently and the loss is reported
# once.
_READ_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local function fields(row)
  local m = {}
  for i = 1, #row, 2 do m[row[i]] = row[i + 1] end
  return m
end
local function before(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local group = nil
for _, row in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = fields(row)
  if g['name'] == ARGV[1] then group = g end
end
if not group then return {-1} end
local s = fields(redis.call('XINFO', 'STREAM', KEYS[1]))
local last = group['last-delivered-id']
local read = group['entries-read']
local dropped = s['entries-added'] - s['length']
local lost = 0
if dropped > 0 then
  local first = s['first-entry']
  local behind
  if first then behind = before(last, first[1])
  else behind = before(last, s['last-generated-id']) end
  if behind and (not read or read < dropped) then
    lost = 1
    redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', dropped)
  end
end
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                       'STREAMS', KEYS[1], '>')
local entries = {}
if got then entries = got[1][2] end
return {lost, last, s['last-generated-id'], entries}
"""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_id(v: Any) -> StreamId:
    ms, _, seq = _text(v).partition("-")
    return int(ms), int(seq or 0)


class GroupMissing(Exception):
    """The stream or the consumer group does not exist (any more)."""


def parse_entries(entries: list[Entry]) -> tuple[list[TargetRow], list[Reject], int]:
    """Rows to load, rejects, and how many entries were not inserts (skipped)."""
    rows: list[TargetRow] = []
    rejects: list[Reject] = []
    skipped = 0
    for raw_id, fields in entries:
        entry_id = _text(raw_id)
        frag = fields.get(b"f")
        if frag is None:
            rejects.append(
                Reject(
                    "stream entry has no event fragment 'f'",
                    ORIGIN,
                    entry_id=entry_id,
                    payload=repr(fields),
                )
            )
            continue
        try:
            event = decode_event(assemble_event(TOPIC, entry_id, frag))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            rejects.append(
                Reject(f"undecodable event: {exc}", ORIGIN, entry_id=entry_id, payload=frag)
            )
            continue
        if event.op != "insert":
            # audit logs are append-only; an update or delete of one is not a new entry
            skipped += 1
            continue
        if event.data is None:
            # larger than the notifier's BRIDGE_MAX_EVENT_BYTES: the event has no row
            sid = int(event.key) if event.key.isdigit() and len(event.key) < 19 else None
            rejects.append(
                Reject(
                    f"row of {event.size} bytes published without its data "
                    "(BRIDGE_MAX_EVENT_BYTES)",
                    ORIGIN,
                    source_id=sid,
                    entry_id=entry_id,
                    payload=frag,
                )
            )
            continue
        try:
            rows.append(from_row(event.data))
        except BadRow as exc:
            sid = event.data.get("id")
            ok_id = isinstance(sid, int) and not isinstance(sid, bool) and 0 < sid < 2**63
            rejects.append(
                Reject(
                    exc.reason,
                    ORIGIN,
                    source_id=sid if ok_id else None,
                    entry_id=entry_id,
                    payload=frag,
                )
            )
    return rows, rejects, skipped


def _pairs(flat: Any) -> dict[bytes, bytes]:
    """A script returns an entry's fields as a flat list; XREADGROUP's shape is a dict."""
    if isinstance(flat, dict):
        return flat
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class StreamConsumer:
    """The event-mode loop (see module docstring)."""

    def __init__(
        self,
        redis: AnyRedis,
        channels: Channels,
        consumer: str,
        sink: Sink,
        stats: EtlStats,
        *,
        batch_size: int,
        claim_idle: float,
        claim_interval: float,
        max_deliveries: int,
        on_loss: Callable[[str], None],
        block: float = 1.0,
    ) -> None:
        self.redis = redis
        self.stream = channels.stream(TOPIC)
        self.group = channels.etl_group
        self.consumer = consumer
        self.sink = sink
        self.stats = stats
        self.batch_size = batch_size
        self.claim_idle_ms = int(claim_idle * 1000)
        self.claim_interval = claim_interval
        self.max_deliveries = max_deliveries
        self.block_ms = max(1, int(block * 1000))
        self.on_loss = on_loss
        #: highest entry id this worker has read: Redis going back before it lost data
        self.seen: StreamId = (0, 0)
        self._stop: asyncio.Event | None = None
        self._sha: str | None = None
        self._created = False

    async def ensure_group(self) -> None:
        """Create the group at the stream's start (MKSTREAM): nothing already there is
        skipped. A group created where this target already had one means Redis lost it."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            # remembered until the target answered: a database hiccup right now must not
            # hide the loss (the next try finds the group and would not know it is new)
            self._created = True
            self.seen = (0, 0)
            log.info("stream.group_created", stream=self.stream, group=self.group)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        first = await self._mark_group()
        if self._created and not first:
            self.loss("group_missing")
        self._created = False

    async def _mark_group(self) -> bool:
        """Remember on the target that it has a group; True if this is the first time."""
        async with self.sink.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO bridge.etl_state (name) VALUES (%s)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                (GROUP_MARKER,),
            )
            first = await cur.fetchone() is not None
            await conn.commit()
        return first

    def loss(self, reason: str, **facts: Any) -> None:
        log.warning("stream.loss_detected", reason=reason, stream=self.stream, **facts)
        self.on_loss(reason)

    def _check_position(self, last_delivered: Any, last_generated: Any) -> None:
        """Redis went back before an id this worker read: it lost data (see docstring)."""
        if self.seen == (0, 0):
            return
        group_at, stream_at = parse_id(last_delivered), parse_id(last_generated)
        if group_at < self.seen or stream_at < self.seen:
            seen = f"{self.seen[0]}-{self.seen[1]}"
            self.loss("went_back", seen=seen, group_at=_text(last_delivered))
            self.seen = min(group_at, stream_at)

    async def _read_script(self) -> Any:
        args = (self.group, self.consumer, self.batch_size)
        if self._sha is None:
            self._sha = _text(await self.redis.script_load(_READ_LUA))
        try:
            return await self.redis.evalsha(self._sha, 1, self.stream, *args)
        except NoScriptError:
            # Redis restarted (script cache empty) or the key's node never saw the load:
            # run it by text this once and load it again next time
            self._sha = None
            return await self.redis.eval(_READ_LUA, 1, self.stream, *args)

    async def handle(self, entries: list[Entry]) -> None:
        """Load a batch of entries, then acknowledge them."""
        if not entries:
            return
        rows, rejects, _ = parse_entries(entries)
        if tracing.enabled():
            traced = [tp for _, f in entries if (tp := fragment_traceparent(f.get(b"f", b"")))]
            with tracing.events_span(
                "bridge.etl",
                "etl.load",
                traced,
                {"bridge.topic": TOPIC, "bridge.events": len(entries), "bridge.rows": len(rows)},
                untraced=len(traced) < len(entries),
                kind=tracing.SpanKind.CONSUMER,
            ):
                await self.sink.load(rows, rejects, origin=ORIGIN, stop=self._stop)
        else:
            await self.sink.load(rows, rejects, origin=ORIGIN, stop=self._stop)
        # stored (committed): publish → store lag of each entry, by the id's publish time
        self.stats.store_lag(TOPIC, [e[0] for e in entries], time.time())
        await self.redis.xack(self.stream, self.group, *[e[0] for e in entries])

    async def read_new(self, block: bool) -> int:
        """Check the group against the stream and read new entries, in one script call;
        with `block`, wait up to `block` seconds for an entry when there was none."""
        resp: Any = await self._read_script()
        if int(resp[0]) == -1:
            raise GroupMissing(self.stream)
        lost, last_delivered, last_generated, items = resp
        if int(lost):
            self.loss("trimmed", group_at=_text(last_delivered))
        self._check_position(last_delivered, last_generated)
        entries: list[Entry] = [(raw_id, _pairs(flat)) for raw_id, flat in items]
        if entries:
            self.seen = max(self.seen, parse_id(entries[-1][0]))
            await self.handle(entries)
            return len(entries)
        self.stats.idle(ORIGIN)
        if block:
            # a plain XREAD after the stream's last id wakes on the next entry; the group
            # reads it through the script again
            await self.redis.xread({self.stream: last_generated}, count=1, block=self.block_ms)
        return 0

    async def claim(self) -> int:
        """Take over entries idle on other (dead) consumers; dead-letter poison entries."""
        start = "0-0"
        total = 0
        while True:
            resp: Any = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                self.claim_idle_ms,
                start_id=start,
                count=self.batch_size,
            )
            start = _text(resp[0])
            entries: list[Entry] = [e for e in resp[1] if e is not None and e[1] is not None]
            deleted = resp[2] if len(resp) > 2 else []
            if deleted or len(entries) < len(resp[1]):
                # pending on a dead consumer, then trimmed before anyone loaded them
                missed = len(deleted) or len(resp[1]) - len(entries)
                self.loss("pending_trimmed", entries=missed)
            if entries:
                total += len(entries)
                await self._handle_claimed(entries)
            if start == "0-0":
                return total

    async def _handle_claimed(self, entries: list[Entry]) -> None:
        pending = await self.redis.xpending_range(
            self.stream,
            self.group,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries) * 2,
            consumername=self.consumer,
        )
        delivered = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        poison: list[Entry] = []
        good: list[Entry] = []
        for e in entries:
            n = delivered.get(_text(e[0]), 0)
            (poison if n > self.max_deliveries else good).append(e)
        log.info("stream.claimed", entries=len(entries), poison=len(poison))
        if poison:
            rejects = []
            for raw_id, fields in poison:
                entry_id = _text(raw_id)
                n = delivered.get(entry_id, 0)
                rejects.append(
                    Reject(
                        f"delivered {n} times without being loaded (its workers died handling it)",
                        ORIGIN,
                        entry_id=entry_id,
                        payload=fields.get(b"f", b""),
                    )
                )
            await self.sink.load([], rejects, origin=ORIGIN, stop=self._stop)
            await self.redis.xack(self.stream, self.group, *[e[0] for e in poison])
        await self.handle(good)

    async def run(self, stop: asyncio.Event, *, once: bool = False) -> None:
        """Consume until `stop`; with `once`, until nothing new or claimable is left."""
        self._stop = stop
        backoff = Backoff(base=0.2, cap=5.0)
        next_claim = 0.0
        group_ready = False
        while not stop.is_set():
            try:
                if not group_ready:
                    await self.ensure_group()
                    group_ready = True
                if once:
                    await self.claim()
                    while not stop.is_set() and await self.read_new(block=False):
                        pass
                    return
                if time.monotonic() >= next_claim:
                    await self.claim()
                    next_claim = time.monotonic() + self.claim_interval
                await self.read_new(block=True)
                backoff.reset()
            except Stopping:
                return
            except GroupMissing:
                # the stream (and its group) is gone: recreate, which reports the loss
                log.warning("stream.group_missing", stream=self.stream)
                group_ready = False
                continue
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.warning("stream.group_missing", stream=self.stream)
                    group_ready = False
                    continue
                # CLUSTERDOWN, TRYAGAIN, LOADING, MASTERDOWN …: Redis is changing under us
                delay = backoff.next_delay()
                log.warning("stream.redis_refused", error=str(exc), retry_in=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            except psycopg.OperationalError as exc:
                delay = backoff.next_delay()
                log.warning("stream.target_failed", error=str(exc).strip(), retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("stream.redis_failed", error=str(exc), retry_in=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
