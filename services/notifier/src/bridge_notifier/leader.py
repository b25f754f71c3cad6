"""Leader election: a PostgreSQL session advisory lock held by the relay's own connection.

The lock and the outbox queries share one connection, so the instant that connection is
lost the relay can neither read nor prune rows, and the server releases the lock for a
standby to take. Only the holder publishes.
"""

from __future__ import annotations

from typing import Any

import psycopg

#: one relay per outbox (per database), whatever the Redis namespace: "bridgeNo"
LOCK_KEY = int.from_bytes(b"bridgeNo", "big")


async def try_acquire(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Try once, without waiting; True when this session holds the lock now."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
    row = await cur.fetchone()
    return bool(row and row[0])


async def release(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
