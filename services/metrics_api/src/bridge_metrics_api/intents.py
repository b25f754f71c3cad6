"""Intent figures from the source database (`intents`): counts by status, recent failures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

#: statuses listed one by one; the rest are summed under "other" (statuses are free text)
MAX_STATUSES = 50

# One pass over the status index; `updated_at` marks when an intent reached its status.
_BY_STATUS_SQL = """
SELECT status,
       count(*)::bigint,
       (count(*) FILTER (WHERE updated_at > %(now)s - interval '5 minutes'))::bigint
FROM intents
GROUP BY status
ORDER BY 2 DESC, 1
"""


@dataclass(slots=True)
class IntentCounts:
    by_status: dict[str, int]
    total: int
    failed_5m: int


async def counts(pool: AsyncConnectionPool, now: datetime) -> IntentCounts:
    async with pool.connection() as conn:
        cur = await conn.execute(_BY_STATUS_SQL, {"now": now})
        rows = await cur.fetchall()
    by_status: dict[str, int] = {}
    failed_5m = 0
    for i, (status, n, recent) in enumerate(rows):
        key = status if i < MAX_STATUSES else "other"
        by_status[key] = by_status.get(key, 0) + int(n)
        if status == "failed":
            failed_5m = int(recent)
    return IntentCounts(by_status=by_status, total=sum(by_status.values()), failed_5m=failed_5m)
