"""Reading a topic's history for resume and gap fill: Redis first, PostgreSQL for the rest.

Redis holds the recent window (each topic's stream, trimmed oldest-first with `MAXLEN ~`).
Each batch is read together with `XINFO STREAM` in one transaction; Redis cannot vouch for
the events after our position when the stream is missing, when entries after it were
trimmed (the first retained entry lies beyond it), or when the stream's
`max-deleted-entry-id` — set by the notifier when it finds that Redis lost data (see
`bridge_common.redis`) — lies beyond it.

Then the events come from the PostgreSQL history (:mod:`.archive`) up to its end, and
reading switches back to Redis after the last of them: ids are the same in both tiers and
increase per topic, so the join has no gap and no duplicate. Only when the history cannot
vouch either (older than its retention, or unreachable) is :class:`HistoryLost` raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from bridge_common.channels import Channels
from bridge_common.events import assemble_event
from bridge_common.redis import AnyRedis, is_cluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from . import metrics
from .errors import HistoryLost
from .event_ids import ZERO, EventId, format_id, parse_id

if TYPE_CHECKING:
    from .archive import Archive

#: re-reads of a history database that stays behind Redis (a lagging replica) before
#: giving up, and the pause between them (s)
_BEHIND_RETRIES = 5
_BEHIND_PAUSE = 0.2

#: Redis commands the gateway's sessions run at once (the client pool holds 100)
REDIS_CONCURRENCY = 32

#: (event id, id bytes, event wire form, gateway-only meta — see views.py)
Entry = tuple[EventId, bytes, bytes, bytes]


class _Gap(Exception):
    """Redis cannot vouch for the events after a position (internal)."""

    def __init__(self, missing: bool) -> None:
        super().__init__("stream missing" if missing else "trimmed or lost")
        self.missing = missing


class History:
    def __init__(
        self,
        redis: AnyRedis,
        channels: Channels,
        batch: int = 500,
        *,
        limit: asyncio.Semaphore | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.redis = redis
        self.channels = channels
        self.batch = batch
        self.archive = archive
        # bounds concurrent reads (a thousand clients resuming at once share the pool)
        self.limit = limit or asyncio.Semaphore(REDIS_CONCURRENCY)
        self._transaction = not is_cluster(redis)

    async def tail(self, topic: str) -> EventId:
        """The newest event id of the topic (ZERO when it has none)."""
        async with self.limit:
            entries = await self.redis.xrevrange(self.channels.stream(topic), "+", "-", count=1)
        if not entries:
            return ZERO
        newest: Any = entries[0][0]
        return parse_id(newest)

    async def read_after(self, topic: str, after: EventId) -> AsyncIterator[list[Entry]]:
        """Yield batches of the events after `after`, oldest first, up to the current end,
        from whichever tier holds them (see module docstring)."""
        cursor = after
        from_archive = False
        behind = 0
        while True:
            try:
                async for batch in self._read_redis(topic, cursor):
                    cursor = batch[-1][0]
                    yield batch
                return
            except _Gap as gap:
                if from_archive and gap.missing:
                    # nothing was published since Redis lost the stream: what the history
                    # holds (everything published before we joined live) was all of it
                    return
                if self.archive is None:
                    raise HistoryLost(
                        f"events after {format_id(cursor)} on {topic!r} are no longer "
                        "retained; reload the state",
                        topic=topic,
                    ) from None
            if from_archive:
                # the history ended before what Redis lost: it is behind (a replica)
                behind += 1
                if behind > _BEHIND_RETRIES:
                    raise HistoryLost(
                        f"events after {format_id(cursor)} on {topic!r} are not in Redis and "
                        "the history database is behind; retry later",
                        topic=topic,
                    )
                await asyncio.sleep(_BEHIND_PAUSE)
            from_archive = True
            async for rows in self.archive.read_after(topic, cursor):
                out = [
                    (pos, id_bytes, assemble_event(topic, id_bytes, frag), meta)
                    for pos, id_bytes, frag, meta in rows
                ]
                cursor = out[-1][0]
                metrics.FROM_HISTORY_DB.inc(len(out))
                behind = 0
                yield out

    async def _read_batch(self, key: str, cursor: EventId) -> list[Any]:
        """XINFO STREAM + XRANGE in one transaction; once more on a fresh connection when
        the pooled one died with a restarted Redis."""
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=self._transaction)
            pipe.xinfo_stream(key)
            pipe.xrange(key, min=f"({format_id(cursor)}", max="+", count=self.batch)
            try:
                result: list[Any] = await pipe.execute(raise_on_error=False)
                return result
            except RedisConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read_redis(self, topic: str, after: EventId) -> AsyncIterator[list[Entry]]:
        """Batches from the stream; `_Gap` when Redis cannot vouch for what follows."""
        key = self.channels.stream(topic)
        cursor = after
        while True:
            async with self.limit:
                info, entries = await self._read_batch(key, cursor)
            if isinstance(entries, Exception):
                raise entries
            if isinstance(info, ResponseError):
                # no such stream: nothing retained; a real position in it is gone
                if cursor != ZERO:
                    raise _Gap(missing=True)
                return
            if isinstance(info, Exception):
                raise info
            if _trimmed_past(info, cursor):
                raise _Gap(missing=False)
            if not entries:
                return
            out: list[Entry] = []
            for entry_id, fields in entries:
                frag = fields.get(b"f")
                if frag is None:
                    continue
                out.append(
                    (
                        parse_id(entry_id),
                        entry_id,
                        assemble_event(topic, entry_id, frag),
                        fields.get(b"m", b""),
                    )
                )
            cursor = parse_id(entries[-1][0])
            if out:
                yield out
            if len(entries) < self.batch:
                return


def _trimmed_past(info: dict[str, Any], cursor: EventId) -> bool:
    """Whether entries after `cursor` may have been removed from the stream."""
    max_deleted = info.get("max-deleted-entry-id")
    if max_deleted is not None and cursor < parse_id(max_deleted):
        # the newest id removed by XDEL, or the notifier's mark of a Redis data loss
        return True
    added = int(info.get("entries-added") or 0)
    length = int(info.get("length") or 0)
    if added <= length:
        return False  # nothing was ever trimmed (or Redis < 7 without the counter)
    first = info.get("first-entry")
    if first:
        first_id = parse_id(first[0])
    else:
        last = info.get("last-generated-id") or b"0-0"
        first_id = parse_id(last)
        return cursor < first_id
    # entries before `first_id` were trimmed; we need everything after `cursor`
    return cursor < first_id and not _adjacent(cursor, first_id)


def _adjacent(a: EventId, b: EventId) -> bool:
    """Ids with nothing possible between them (same ms, next seq)."""
    return a[0] == b[0] and a[1] + 1 == b[1]
