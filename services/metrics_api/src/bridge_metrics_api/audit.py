"""Audit figures from the target database: windows, timeline, corrections.

Counts come from the rollups per minute, hour and day — per action and severity
(`audit_logs_1m/1h/1d`) and for all actions (`audit_totals_1m/1h/1d`); tables kept in the
ETL's load transaction on plain PostgreSQL, hierarchical real-time continuous aggregates
on TimescaleDB, same columns — read as `planner` cuts each range: the coarsest exact level
in the middle, finer ones at the edges. Never a scan of raw rows, and a bounded number of
rollup buckets per request, so answers cost the same at 10 or 100 million rows and for a
day or 90 days. Only the list of the latest corrections reads `audit_logs_ts`, through its
`(action, created_at DESC)` index and a LIMIT. Every statement is a constant; user values
are bind parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge_common.events import dumps
from psycopg_pool import AsyncConnectionPool

from . import planner
from .cache import Settled, SettledBuckets
from .params import SEVERITIES, CorrectionsQuery, TimelineQuery
from .planner import HOUR, ORIGIN, floor_to

CORRECTION_ACTION = "intent.corrected"
ERROR_SEVERITIES = ("error", "critical")
#: the overview's windows, name → length
WINDOWS: dict[str, timedelta] = {
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
}

# A minute bucket belongs to the window "last N" when it starts after now − N: at 17:34:30
# the 5-minute window holds the buckets 17:30 … 17:34. The last hour comes from minutes; the
# 24 h window from the planner's slots (hours, minutes at both edges).
_LAST_HOUR_SQL = """
SELECT bucket, debug, info, warning, error, critical
FROM audit_totals_1m
WHERE bucket > %(now)s - interval '1 hour' AND bucket <= %(now)s
"""
_CORRECTIONS_1H_SQL = """
SELECT coalesce(sum(events), 0)::bigint
FROM audit_logs_1m
WHERE action = 'intent.corrected' AND bucket > %(now)s - interval '1 hour' AND bucket <= %(now)s
"""
_SUMS = ", ".join(f"coalesce(sum({s}), 0)::bigint" for s in SEVERITIES)
_TOTALS_SQL = f"""
SELECT {_SUMS}
FROM (
    {planner.union_sql(per_action=False)}
) AS r
"""  # noqa: S608 - constant text, values are bind parameters

# One constant statement per rollup family, each answering (t, debug … critical): the
# totals sum their columns, the per-action rows are pivoted by severity.
_TIMELINE_SQL = {
    False: f"""
SELECT date_bin(%(width)s, bucket, %(origin)s) AS t, {_SUMS}
FROM (
    {planner.union_sql(per_action=False)}
) AS r
GROUP BY 1
ORDER BY 1
""",  # noqa: S608 - constant text, values are bind parameters
    True: """
SELECT date_bin(%(width)s, bucket, %(origin)s) AS t, {pivot}
FROM (
    {union}
) AS r
GROUP BY 1
ORDER BY 1
""".format(
        pivot=", ".join(
            f"coalesce(sum(events) FILTER (WHERE severity = '{s}'), 0)::bigint" for s in SEVERITIES
        ),
        union=planner.union_sql(per_action=True),
    ),
}

_LATEST_CORRECTIONS_SQL = """
SELECT source_id, created_at, intent_id, actor, severity, details
FROM audit_logs_ts
WHERE action = 'intent.corrected' AND created_at >= %(since)s AND created_at < %(until)s
ORDER BY created_at DESC, source_id DESC
LIMIT %(limit)s
"""


def iso(t: datetime) -> str:
    """UTC, second precision or finer, with a `Z`: what every time in our answers looks like."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class WindowCounts:
    events: int = 0
    errors: int = 0
    by_severity: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))

    @property
    def error_rate(self) -> float:
        """(error + critical) / all events; 0 when there were none."""
        return self.errors / self.events if self.events else 0.0

    def add(self, severity: str, n: int) -> None:
        self.events += n
        self.by_severity[severity] = self.by_severity.get(severity, 0) + n
        if severity in ERROR_SEVERITIES:
            self.errors += n

    def as_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "by_severity": self.by_severity,
        }


@dataclass(slots=True)
class AuditWindows:
    windows: dict[str, WindowCounts]
    corrections_1h: int


async def windows(pool: AsyncConnectionPool, now: datetime) -> AuditWindows:
    """Events by severity over the last 5 min / 1 h / 24 h, and corrections in the last hour."""
    out = {name: WindowCounts() for name in WINDOWS}
    # the minutes (now − 24 h, now]: whole minutes starting in [now − 24 h + 1 µs, now + 1 µs)
    tick = timedelta(microseconds=1)
    day = planner.plan(now - WINDOWS["24h"] + tick, now + tick, None)
    five = now - WINDOWS["5m"]
    async with pool.connection() as conn:
        cur = await conn.execute(_LAST_HOUR_SQL, {"now": now})
        for bucket, *counts in await cur.fetchall():
            for severity, n in zip(SEVERITIES, counts, strict=True):
                out["1h"].add(severity, int(n))
                if bucket > five:
                    out["5m"].add(severity, int(n))
        cur = await conn.execute(_CORRECTIONS_1H_SQL, {"now": now})
        row = await cur.fetchone()
        corrections = int(row[0]) if row else 0
        cur = await conn.execute(_TOTALS_SQL, day.params())
        row = await cur.fetchone()
        for severity, n in zip(SEVERITIES, row or (), strict=False):
            out["24h"].add(severity, int(n))
    return AuditWindows(windows=out, corrections_1h=corrections)


async def timeline(
    pool: AsyncConnectionPool,
    q: TimelineQuery,
    cache: SettledBuckets | None = None,
    now: datetime | None = None,
) -> bytes:
    """Events per bucket split by severity, every bucket present (zeros where none), as JSON.

    Buckets that lie wholly inside the range and ended before the cache's settle horizon
    come from `cache` when it has them — counts and their encoded JSON point — and the
    database is asked only for the runs of buckets it lacks (usually the partial first
    bucket and the last few minutes). Buckets are numbered from the UTC origin.
    """
    now = now or datetime.now(UTC)
    severities = list(q.severities or SEVERITIES)
    width = q.width
    first = floor_to(q.since, width)
    n0 = (first - ORIGIN) // width
    numbers = range(n0, n0 + -(-(q.until - first) // width))
    key = (q.bucket, q.action, tuple(severities) if q.severities else None)
    cacheable = range(0)
    blocks: dict[int, Settled] = {}
    if cache is not None and cache.enabled:
        horizon = min(q.until, cache.settled_before(now))
        # whole buckets only: from the first that starts at or after `since` to the last
        # that ends at or before the horizon
        lo = n0 if first >= q.since else n0 + 1
        hi = (horizon - ORIGIN) // width
        cacheable = range(lo, max(lo, hi))
        size = cache.BLOCK
        blocks = cache.lookup_blocks(
            key, range(-(-cacheable.start // size), cacheable.stop // size)
        )
    # the answer in order: whole cached blocks, and single buckets between them
    order: list[tuple[bool, int]] = []
    n = numbers.start
    while n < numbers.stop:
        if blocks and n % SettledBuckets.BLOCK == 0 and n // SettledBuckets.BLOCK in blocks:
            order.append((True, n // SettledBuckets.BLOCK))
            n += SettledBuckets.BLOCK
        else:
            order.append((False, n))
            n += 1
    singles = [x for is_block, x in order if not is_block]
    cached: dict[int, Settled] = {}
    if cache is not None and cache.enabled:
        cached = cache.lookup(key, [x for x in singles if x in cacheable])
    missing = [x for x in singles if x not in cached]
    fresh: dict[int, dict[str, int]] = {n: dict.fromkeys(severities, 0) for n in missing}
    if missing:
        sql = _TIMELINE_SQL[q.action is not None]
        async with pool.connection() as conn:
            for lo_t, hi_t in _spans(missing, width, q.since, q.until):
                args: dict[str, Any] = {
                    "width": width,
                    "origin": ORIGIN,
                    "action": q.action,
                    "severities": q.severities,
                    **planner.plan(lo_t, hi_t, width).params(),
                }
                cur = await conn.execute(sql, args)
                for t, *by_severity in await cur.fetchall():
                    point = fresh.get((t - ORIGIN) // width)
                    if point is None:
                        continue  # cached already
                    for severity, n in zip(SEVERITIES, by_severity, strict=True):
                        if severity in point:
                            point[severity] += int(n)
    counts: list[tuple[int, ...]] = []
    frags: list[bytes] = []
    new: dict[int, Settled] = {}
    for is_block, n in order:
        hit = blocks[n] if is_block else cached.get(n)
        if hit is None:
            point = fresh[n]
            # UTC datetimes: msgspec writes them as ISO 8601 with "Z"
            body = {"t": ORIGIN + n * width, "total": sum(point.values()), **point}
            hit = (tuple(point.values()), dumps(body))
            if n in cacheable:
                new[n] = hit
        counts.append(hit[0])
        frags.append(hit[1])
    if cache is not None and new:
        cache.store(key, new)
    sums = (
        [sum(column) for column in zip(*counts, strict=True)] if counts else [0] * len(severities)
    )
    totals = dict(zip(severities, sums, strict=True))
    head = dumps(
        {
            "bucket": q.bucket,
            "since": q.since,
            "until": q.until,
            "action": q.action,
            "severities": severities,
            "totals": {**totals, "total": sum(sums)},
        }
    )
    # the points are encoded once per bucket and cached with it; here they are only joined
    return head[:-1] + b',"points":[' + b",".join(frags) + b"]}"


#: more runs of missing buckets than this are fetched as one span
MAX_SPANS = 4


def _spans(
    missing: list[int], width: timedelta, since: datetime, until: datetime
) -> list[tuple[datetime, datetime]]:
    """Contiguous runs of missing bucket numbers as [lo, hi) times clipped to [since, until).

    Usually two: the partial first bucket and the last few minutes, between them the
    cached history the database is not asked for again.
    """
    runs: list[list[int]] = []
    for n in missing:
        if runs and runs[-1][1] == n:
            runs[-1][1] = n + 1
        else:
            runs.append([n, n + 1])
    if len(runs) > MAX_SPANS:
        runs = [[runs[0][0], runs[-1][1]]]
    return [(max(since, ORIGIN + lo * width), min(until, ORIGIN + hi * width)) for lo, hi in runs]


async def corrections(pool: AsyncConnectionPool, q: CorrectionsQuery) -> dict[str, Any]:
    """Corrections per hour (from the rollups) and the latest ones (from the rows)."""
    args = {"since": q.since, "until": q.until, "limit": q.limit}
    per_hour = {
        "width": HOUR,
        "origin": ORIGIN,
        "action": CORRECTION_ACTION,
        "severities": None,
        **planner.plan(q.since, q.until, HOUR).params(),
    }
    async with pool.connection() as conn:
        cur = await conn.execute(_TIMELINE_SQL[True], per_hour)
        per_hour_rows = await cur.fetchall()
        cur = await conn.execute(_LATEST_CORRECTIONS_SQL, args)
        latest_rows = await cur.fetchall()
    counts = {t: sum(int(n) for n in by_severity) for t, *by_severity in per_hour_rows}
    hours = []
    t = floor_to(q.since, HOUR)
    while t < q.until:
        hours.append({"t": iso(t), "count": counts.get(t, 0)})
        t += HOUR
    return {
        "since": iso(q.since),
        "until": iso(q.until),
        "total": sum(counts.values()),
        "per_hour": hours,
        "limit": q.limit,
        "latest": [
            {
                "source_id": source_id,
                "created_at": iso(created_at),
                "intent_id": str(intent_id) if intent_id is not None else None,
                "actor": actor,
                "severity": severity,
                "details": details,
            }
            for source_id, created_at, intent_id, actor, severity, details in latest_rows
        ],
    }
