"""Event mode: consume the `audit_logs` topic stream through a Redis consumer group.

Each worker is one consumer of `Channels.etl_group`. It reads new entries (XREADGROUP),
loads the batch, and XACKs only after the load committed — a crash before the XACK leaves
the entries pending, and a replay inserts nothing (the target's key), so the effect is
exactly once. Entries a dead worker left pending are taken over with XAUTOCLAIM once idle
for `claim_idle`; an entry delivered more than `max_deliveries` times (it kept killing its
worker) goes to the dead-letter stream instead of being tried again. Entries that cannot
be decoded or transformed are dead-lettered with the reason and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from bridge_common import tracing
from bridge_common.channels import Channels
from bridge_common.db import Backoff
from bridge_common.events import assemble_event, decode_event, fragment_traceparent
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis
from redis.exceptions import RedisError, ResponseError

from .deadletter import Reject
from .errors import BadRow
from .sink import Sink, Stopping
from .stats import EtlStats
from .transform import TargetRow, from_row

log = get_logger(__name__)

TOPIC = "audit_logs"
ORIGIN = "stream"
Entry = tuple[bytes, dict[bytes, bytes]]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


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
        self._stop: asyncio.Event | None = None

    async def ensure_group(self) -> None:
        """Create the group at the stream's start (MKSTREAM): nothing already there is skipped."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("stream.group_created", stream=self.stream, group=self.group)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

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
        resp: Any = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch_size,
            block=self.block_ms if block else None,
        )
        entries: list[Entry] = []
        for _stream, items in resp or []:
            entries.extend(items)
        if entries:
            await self.handle(entries)
        else:
            self.stats.idle(ORIGIN)
        return len(entries)

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
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # the stream (and its group) was deleted: recreate and go on
                    log.warning("stream.group_missing", stream=self.stream)
                    group_ready = False
                    continue
                # CLUSTERDOWN, TRYAGAIN, LOADING, MASTERDOWN …: Redis is changing under us
                delay = backoff.next_delay()
                log.warning("stream.redis_refused", error=str(exc), retry_in=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("stream.redis_failed", error=str(exc), retry_in=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
