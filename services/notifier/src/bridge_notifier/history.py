"""The relay's side of the history tier: assigning event ids, and the history queries.

:class:`Ids` is the sans-I/O core: per topic, the last id assigned (it lives in
`bridge.history_topics`, written in the same transaction as the history rows) and the last
id Redis was given (`pub`, saved lazily). Ids increase per topic whatever the clock does.
:class:`HistoryStore` runs the queries on the leader's connection: load the state, read
back what Redis may lack, save the published marks, keep the hourly partitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from bridge_common.history import (
    HOUR_MS,
    READ_AFTER,
    Position,
    fragment,
    next_position,
)
from bridge_common.logging import get_logger

from .outbox import StateRows

log = get_logger("bridge_notifier.history")

#: partitions are kept this far ahead of the newest id (ms)
AHEAD_MS = 3 * HOUR_MS


@dataclass(slots=True)
class TopicState:
    last: Position
    pub: Position
    first_ms: int
    #: `pub` moved since it was last written to PostgreSQL
    dirty: bool = False


@dataclass(slots=True)
class Ids:
    """Every topic's last assigned and last published id (see module docstring)."""

    topics: dict[str, TopicState] = field(default_factory=dict)

    def known(self, topic: str) -> bool:
        return topic in self.topics

    def start(self, topic: str, floor: Position) -> None:
        """A topic without history: its ids start above `floor` (what Redis already holds
        on it, ids a client may have from before the history existed)."""
        self.topics[topic] = TopicState(last=floor, pub=floor, first_ms=0)

    def assign(self, topic: str, now_ms: int) -> Position:
        st = self.topics[topic]
        st.last = next_position(st.last, now_ms)
        if st.first_ms == 0:
            st.first_ms = st.last[0]
        return st.last

    def published(self, topic: str, upto: Position) -> None:
        st = self.topics[topic]
        if upto > st.pub:
            st.pub = upto
            st.dirty = True

    def behind(self) -> list[str]:
        """Topics whose history holds ids Redis may not have been given."""
        return [t for t, st in self.topics.items() if st.pub < st.last]

    def state_rows(self, topics: list[str]) -> StateRows:
        rows = StateRows()
        for t in topics:
            st = self.topics[t]
            rows.topics.append(t)
            rows.last_ms.append(st.last[0])
            rows.last_n.append(st.last[1])
            rows.pub_ms.append(st.pub[0])
            rows.pub_n.append(st.pub[1])
            rows.first_ms.append(st.first_ms)
            st.dirty = False
        return rows

    def dirty(self) -> list[str]:
        return [t for t, st in self.topics.items() if st.dirty]


class HistoryStore:
    """History queries on the leader's (autocommit) connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        #: partitions exist below this ms
        self.ready_until = 0

    async def load(self) -> Ids:
        cur = await self.conn.execute(
            "SELECT topic, last_ms, last_n, pub_ms, pub_n, first_ms FROM bridge.history_topics"
        )
        ids = Ids()
        for topic, lms, ln, pms, pn, fms in await cur.fetchall():
            ids.topics[topic] = TopicState(last=(lms, ln), pub=(pms, pn), first_ms=fms)
        return ids

    async def read_after(
        self, topic: str, after: Position, limit: int
    ) -> list[tuple[Position, bytes, bytes]]:
        cur = await self.conn.execute(
            READ_AFTER.encode(), {"topic": topic, "ms": after[0], "n": after[1], "limit": limit}
        )
        return [fragment(r) for r in await cur.fetchall()]

    async def save_published(self, ids: Ids, topics: list[str]) -> None:
        if not topics:
            return
        rows = ids.state_rows(topics)
        await self.conn.execute(
            "UPDATE bridge.history_topics h SET pub_ms = x.ms, pub_n = x.n "
            "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS x(topic, ms, n) "
            "WHERE h.topic = x.topic AND (x.ms, x.n) > (h.pub_ms, h.pub_n)",
            (rows.topics, rows.pub_ms, rows.pub_n),
        )

    async def ensure_partitions(self, from_ms: int, to_ms: int) -> None:
        """Hourly partitions over [from_ms, to_ms + AHEAD_MS)."""
        until = to_ms + AHEAD_MS
        cur = await self.conn.execute(
            "SELECT bridge.history_ensure(%s, %s)", (from_ms - HOUR_MS, until)
        )
        row = await cur.fetchone()
        if row and row[0]:
            log.info("history.partitions_created", count=row[0])
        self.ready_until = until - (until % HOUR_MS)

    async def drop_before(self, cutoff_ms: int) -> int:
        """Drop the partitions wholly older than `cutoff_ms` (retention). A reader holding
        the table waits at most `lock_timeout`; then the drop is tried again later."""
        async with self.conn.transaction():
            await self.conn.execute("SET LOCAL lock_timeout = '2s'")
            cur = await self.conn.execute("SELECT bridge.history_drop_before(%s)", (cutoff_ms,))
            row = await cur.fetchone()
        return int(row[0]) if row else 0
