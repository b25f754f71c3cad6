"""The dead-letter stream: rows the worker could not load, each with the reason.

A reject is first recorded in `bridge.etl_rejects` (keyed by source id, or by stream entry
when there is none) inside the load transaction; only a newly recorded reject is appended
to `{ns}:etl:dead-letter`. So a bad row that polling re-scans, or that arrives both from
the stream and from polling, is dead-lettered once. Guarantee: at least once (the XADD
happens before the commit; a crash in between repeats it on replay).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from bridge_common.redis import AnyRedis

#: bytes of the offending payload kept in a dead letter
PAYLOAD_LIMIT = 8192


@dataclass(frozen=True, slots=True)
class Reject:
    """One row that cannot be loaded."""

    reason: str
    origin: str  # stream | polling | backfill
    source_id: int | None = None
    entry_id: str | None = None
    payload: bytes | str = b""

    @property
    def key(self) -> str:
        if self.source_id is not None:
            return f"id:{self.source_id}"
        return f"entry:{self.entry_id}"

    def fields(self, worker: str) -> dict[Any, Any]:
        payload = self.payload.encode() if isinstance(self.payload, str) else self.payload
        return {
            "reason": self.reason[:1000],
            "origin": self.origin,
            "source_id": "" if self.source_id is None else str(self.source_id),
            "entry_id": self.entry_id or "",
            "payload": payload[:PAYLOAD_LIMIT],
            "worker": worker,
            "ts": f"{time.time():.3f}",
        }


class DeadLetters:
    """Records rejects in the target and appends new ones to the dead-letter stream."""

    def __init__(self, redis: AnyRedis, stream: str, worker: str, maxlen: int) -> None:
        self.redis = redis
        self.stream = stream
        self.worker = worker
        self.maxlen = maxlen

    async def record(self, conn: psycopg.AsyncConnection[Any], rejects: Sequence[Reject]) -> int:
        """Inside the caller's transaction; returns how many were new (and dead-lettered)."""
        if not rejects:
            return 0
        unique = {r.key: r for r in rejects}
        cur = await conn.execute(
            "INSERT INTO bridge.etl_rejects (key, source_id, reason, origin)"
            " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[])"
            " ON CONFLICT (key) DO NOTHING RETURNING key",
            (
                list(unique),
                [r.source_id for r in unique.values()],
                [r.reason for r in unique.values()],
                [r.origin for r in unique.values()],
            ),
        )
        new = [unique[k] for (k,) in await cur.fetchall()]
        if new:
            pipe = self.redis.pipeline(transaction=False)
            for r in new:
                pipe.xadd(self.stream, r.fields(self.worker), maxlen=self.maxlen, approximate=True)
            await pipe.execute()
        return len(new)
