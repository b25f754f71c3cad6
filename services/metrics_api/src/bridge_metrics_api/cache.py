"""Two small caches that keep answers fast while many dashboards poll at once.

* :class:`SingleFlight` — one computation of a value shared by every caller; refreshed in
  the background once older than `ttl`, so callers do not wait for it. The overview uses
  it: every viewer sees the same figures, about `ttl` (at most `5 × ttl`) old.
* :class:`SettledBuckets` — timeline bucket counts that can no longer change much: buckets
  that ended more than `settle` ago. They are kept for `ttl / 2` to `ttl` seconds (blocks of
  60 expire at random moments, so refetches stay small), so a 24 h timeline
  asks the database only for the last few minutes plus whatever expired. A row the ETL
  loads later than `settle` shows up within `ttl`.

Both are bounded (entries per key, number of keys) and per process.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from bridge_common.logging import get_logger

T = TypeVar("T")
log = get_logger(__name__)


class SingleFlight(Generic[T]):
    """A value computed once for all callers, refreshed in the background.

    Younger than `ttl`: returned as is. Older, but younger than `stale`: returned at once
    while one refresh runs in the background (callers never wait for a recompute once a
    value exists). Older than `stale`, or never computed: callers await one shared
    computation.
    """

    def __init__(self, ttl: float, stale: float | None = None) -> None:
        self.ttl = ttl
        self.stale = stale if stale is not None else 5 * ttl
        self._value: T | None = None
        self._at = 0.0
        self._running: asyncio.Task[T] | None = None

    def _refresh(self, compute: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        if self._running is None or self._running.done():

            async def run() -> T:
                value = await compute()
                self._value, self._at = value, time.monotonic()
                return value

            self._running = asyncio.ensure_future(run())
            # a background refresh nobody awaits must not leave its error unretrieved
            self._running.add_done_callback(_retrieve)
        return self._running

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        if self.ttl <= 0:
            return await compute()
        age = time.monotonic() - self._at
        if self._value is not None and age < self.stale:
            if age >= self.ttl:
                self._refresh(compute)
            return self._value
        # shield: one impatient caller leaving must not cancel everyone's computation
        return await asyncio.shield(self._refresh(compute))


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cache.refresh_failed", error=repr(task.exception()))


#: one settled bucket: its counts (in the answer's severity order) and its encoded JSON point
Settled = tuple[tuple[int, ...], bytes]


class _KeyEntries:
    """One key's buckets and whole blocks (their buckets' points joined, counts summed)."""

    __slots__ = ("blocks", "buckets")

    def __init__(self) -> None:
        self.buckets: dict[int, tuple[float, Settled]] = {}
        self.blocks: dict[int, tuple[float, Settled]] = {}


class SettledBuckets:
    """Settled buckets per key, addressed by bucket number (buckets since the UTC origin).

    Buckets are kept in blocks of `BLOCK` that expire together; a block stored whole is
    also kept pre-joined, so a day of minutes is 24 lookups rather than 1 440.
    """

    #: buckets that expire together
    BLOCK = 60

    def __init__(
        self,
        ttl: float,
        settle: timedelta = timedelta(minutes=2),
        max_keys: int = 64,
        max_buckets: int = 20_000,
    ) -> None:
        self.ttl = ttl
        self.settle = settle
        self.max_keys = max_keys
        self.max_buckets = max_buckets
        self._store: OrderedDict[Hashable, _KeyEntries] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def settled_before(self, now: datetime) -> datetime:
        """Buckets ending at or before this instant may be cached."""
        return now - self.settle

    def _entries(self, key: Hashable) -> _KeyEntries | None:
        found = self._store.get(key)
        if found is not None:
            self._store.move_to_end(key)
        return found

    def lookup_blocks(self, key: Hashable, blocks: range) -> dict[int, Settled]:
        """Whole cached blocks among `blocks` (block b = buckets b·BLOCK … b·BLOCK+BLOCK−1)."""
        found = self._entries(key) if self.enabled else None
        if found is None or not found.blocks:
            return {}
        fresh_after = time.monotonic() - self.ttl
        out = {}
        for b in blocks:
            hit = found.blocks.get(b)
            if hit is not None and hit[0] >= fresh_after:
                out[b] = hit[1]
        return out

    def lookup(self, key: Hashable, numbers: list[int]) -> dict[int, Settled]:
        """The cached buckets among `numbers` that are younger than the TTL."""
        found = self._entries(key) if self.enabled else None
        if found is None:
            return {}
        fresh_after = time.monotonic() - self.ttl
        out = {}
        get = found.buckets.get
        for n in numbers:
            hit = get(n)
            if hit is not None and hit[0] >= fresh_after:
                out[n] = hit[1]
        return out

    def store(self, key: Hashable, buckets: dict[int, Settled]) -> None:
        if not self.enabled or not buckets:
            return
        now = time.monotonic()
        found = self._store.get(key)
        if found is None:
            found = self._store[key] = _KeyEntries()
        self._store.move_to_end(key)
        # each block of buckets is aged by a random part of the TTL, so a day of buckets
        # fetched at once expires block by block — many small refetches, not one big one
        ages: dict[int, float] = {}
        for n, settled in buckets.items():
            block = n // self.BLOCK
            age = ages.get(block)
            if age is None:
                age = ages[block] = random.uniform(0, self.ttl / 2)  # noqa: S311 - jitter
            found.buckets[n] = (now - age, settled)
        for block, age in ages.items():
            members = [buckets.get(n) for n in range(block * self.BLOCK, (block + 1) * self.BLOCK)]
            if all(m is not None for m in members):
                whole = [m for m in members if m is not None]
                sums = tuple(sum(col) for col in zip(*(m[0] for m in whole), strict=True))
                found.blocks[block] = (now - age, (sums, b",".join(m[1] for m in whole)))
        if len(found.buckets) > self.max_buckets:
            expired_before = now - self.ttl
            for n in [n for n, (at, _) in found.buckets.items() if at < expired_before]:
                del found.buckets[n]
            for b in [b for b, (at, _) in found.blocks.items() if at < expired_before]:
                del found.blocks[b]
            while len(found.buckets) > self.max_buckets:
                del found.buckets[min(found.buckets)]
            while len(found.blocks) > self.max_buckets // self.BLOCK:
                del found.blocks[min(found.blocks)]
        while len(self._store) > self.max_keys:
            self._store.popitem(last=False)
