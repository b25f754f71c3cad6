"""Which parts of the continuous aggregate `audit_logs_1m` to refresh after late rows
(Timescale path): the minute buckets that late rows landed in, kept as a few ranges.

The aggregate's policy refreshes the last 2 days every minute and real-time aggregation
shows what is not materialised yet. A row landing more than `LATE_AFTER` behind now may
fall into a bucket that is materialised already and that the policy will soon stop
revisiting, so the worker refreshes that bucket itself. Only the buckets late rows touched
are refreshed — one row a day late re-aggregates one minute, not the whole day since — and
a range never reaches into the last closed bucket or the still-open one: materialising a
bucket that is still being written would hide its later rows until the policy's next run.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

#: the aggregate's bucket (`time_bucket(INTERVAL '1 minute', …)` in the migration)
BUCKET = timedelta(minutes=1)
#: rows older than this behind now are refreshed by the worker; younger ones by the policy
#: (its window is 2 days, so every such bucket is revisited for at least another day)
LATE_AFTER = timedelta(days=1)
#: at most this many refresh calls per flush; more ranges are joined across the smallest gaps
MAX_RANGES = 32
#: late buckets this close together are refreshed as one range (fewer calls, little extra)
JOIN_GAP = timedelta(minutes=15)

_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def bucket_start(ts: datetime) -> datetime:
    """The UTC-aligned minute bucket holding `ts` (as `time_bucket` computes it)."""
    return _EPOCH + ((ts - _EPOCH) // BUCKET) * BUCKET


class LateRanges:
    """Disjoint, sorted `[start, end)` ranges of buckets that need a refresh; bounded to
    `max_ranges` whatever arrives (ranges are joined across the smallest gaps)."""

    def __init__(self, *, max_ranges: int = MAX_RANGES, join_gap: timedelta = JOIN_GAP) -> None:
        self.max_ranges = max_ranges
        self.join_gap = join_gap
        self._starts: list[datetime] = []
        self._ends: list[datetime] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def ranges(self) -> list[tuple[datetime, datetime]]:
        return list(zip(self._starts, self._ends, strict=True))

    def add_buckets(self, buckets: Iterable[datetime]) -> None:
        for b in buckets:
            start = bucket_start(b)
            self.add(start, start + BUCKET)

    def add(self, start: datetime, end: datetime) -> None:
        """Mark `[start, end)` (bucket-aligned) as needing a refresh."""
        i = bisect.bisect_left(self._ends, start - self.join_gap)
        # every range from i on whose start is near enough to [start, end) joins it
        j = i
        while j < len(self._starts) and self._starts[j] <= end + self.join_gap:
            start = min(start, self._starts[j])
            end = max(end, self._ends[j])
            j += 1
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]
        while len(self._starts) > self.max_ranges:
            gaps = [self._starts[k + 1] - self._ends[k] for k in range(len(self._starts) - 1)]
            k = gaps.index(min(gaps))
            self._ends[k] = self._ends[k + 1]
            del self._starts[k + 1], self._ends[k + 1]

    def take(self, now: datetime) -> list[tuple[datetime, datetime]]:
        """The ranges to refresh now, each ending at least one closed bucket before the
        open one; empties the set (give back what failed with `add`)."""
        limit = bucket_start(now) - BUCKET
        out = []
        for start, end in zip(self._starts, self._ends, strict=True):
            end = min(end, limit)
            if end - start >= BUCKET:
                out.append((start, end))
        self._starts.clear()
        self._ends.clear()
        return out
