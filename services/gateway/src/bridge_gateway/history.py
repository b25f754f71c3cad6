"""Reading a topic's retained history (its Redis stream) for resume and gap fill.

Streams are trimmed oldest-first (`MAXLEN ~`), so a position is lost when entries after it
were trimmed. Each batch is read together with `XINFO STREAM` in one transaction: if
anything was ever trimmed and the first retained entry lies after our position, the
history between them may be gone and :class:`HistoryLost` is raised. (A position equal to
the very last trimmed entry is reported lost too: conservative, never silent.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from bridge_common.channels import Channels
from bridge_common.events import assemble_event
from bridge_common.redis import AnyRedis, is_cluster
from redis.exceptions import ResponseError

from .errors import HistoryLost
from .event_ids import ZERO, EventId, format_id, parse_id

#: Redis commands the gateway's sessions run at once (the client pool holds 100)
REDIS_CONCURRENCY = 32

#: (event id, id bytes, event wire form)
Entry = tuple[EventId, bytes, bytes]


class History:
    def __init__(
        self,
        redis: AnyRedis,
        channels: Channels,
        batch: int = 500,
        *,
        limit: asyncio.Semaphore | None = None,
    ) -> None:
        self.redis = redis
        self.channels = channels
        self.batch = batch
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
        """Yield batches of the events after `after`, oldest first, up to the current end."""
        key = self.channels.stream(topic)
        cursor = after
        while True:
            async with self.limit:
                pipe = self.redis.pipeline(transaction=self._transaction)
                pipe.xinfo_stream(key)
                pipe.xrange(key, min=f"({format_id(cursor)}", max="+", count=self.batch)
                info, entries = await pipe.execute(raise_on_error=False)
            if isinstance(entries, Exception):
                raise entries
            if isinstance(info, ResponseError):
                # no such stream: nothing retained; a real position in it is gone
                if cursor != ZERO:
                    raise HistoryLost(
                        f"no history retained for {topic!r}; reload the state", topic=topic
                    )
                return
            if isinstance(info, Exception):
                raise info
            if _trimmed_past(info, cursor):
                raise HistoryLost(
                    f"events after {format_id(cursor)} on {topic!r} are no longer retained; "
                    "reload the state",
                    topic=topic,
                )
            if not entries:
                return
            out: list[Entry] = []
            for entry_id, fields in entries:
                frag = fields.get(b"f")
                if frag is None:
                    continue
                out.append((parse_id(entry_id), entry_id, assemble_event(topic, entry_id, frag)))
            cursor = parse_id(entries[-1][0])
            if out:
                yield out
            if len(entries) < self.batch:
                return


def _trimmed_past(info: dict[str, Any], cursor: EventId) -> bool:
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
