"""Heartbeat bookkeeping: when an instance of the services hash is *down*, when it is gone.

Every instance writes its heartbeat into the hash `Channels.services` every
`BRIDGE_HEARTBEAT_INTERVAL` seconds (one field per instance; a restart is a new instance).
An instance is *down* once it missed :data:`MISSES_FOR_DOWN` heartbeats in a row (crash,
SIGKILL, partition) and *expired* once its last heartbeat is older than its expiry window
(`BRIDGE_HEARTBEAT_EXPIRY`, never shorter than twice the down threshold, so a crash always
shows as down for a while). Expired entries are removed by whoever sees them first — every
service while it heartbeats, the metrics API while it reads — with a compare-and-delete,
so a heartbeat that lands meanwhile is never removed. A clean stop removes its own entry.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from .events import Heartbeat, decode_heartbeat
from .redis import AnyRedis

#: heartbeats missed in a row before an instance counts as down
MISSES_FOR_DOWN = 3
#: default `BRIDGE_HEARTBEAT_EXPIRY` (seconds)
DEFAULT_EXPIRY = 300.0

# KEYS: the hash; ARGV: field, the value that was judged expired
_DELETE_IF_SAME = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def expiry_window(interval: float, expiry: float) -> float:
    """Seconds after its last heartbeat an instance is gone: `expiry`, but at least twice
    the time it takes to count as down."""
    return max(expiry, 2 * MISSES_FOR_DOWN * interval)


def is_down(hb: Heartbeat, now: float) -> bool:
    return (now - hb.ts) > hb.interval * MISSES_FOR_DOWN


def is_expired(hb: Heartbeat, now: float, expiry: float) -> bool:
    return (now - hb.ts) > expiry_window(hb.interval, expiry)


def split(
    entries: dict[Any, Any], now: float, expiry: float
) -> tuple[list[tuple[Any, Heartbeat]], list[tuple[Any, Any]]]:
    """(live entries as heartbeats, (field, raw) of expired or unreadable entries)."""
    live: list[tuple[Any, Heartbeat]] = []
    dead: list[tuple[Any, Any]] = []
    for field, raw in entries.items():
        try:
            hb = decode_heartbeat(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            dead.append((field, raw))
            continue
        if is_expired(hb, now, expiry):
            dead.append((field, raw))
        else:
            live.append((field, hb))
    return live, dead


async def remove(client: AnyRedis, key: str, dead: list[tuple[Any, Any]]) -> int:
    """Delete each (field, raw) unless its value changed since it was read."""
    removed = 0
    for field, raw in dead:
        removed += int(await client.eval(_DELETE_IF_SAME, 1, key, field, raw) or 0)
    return removed


async def prune(client: AnyRedis, key: str, expiry: float, now: float | None = None) -> int:
    """Remove expired and unreadable entries of the services hash; returns how many."""
    now = time.time() if now is None else now
    entries: dict[Any, Any] = await client.hgetall(key)
    _, dead = split(entries, now, expiry)
    return await remove(client, key, dead) if dead else 0
