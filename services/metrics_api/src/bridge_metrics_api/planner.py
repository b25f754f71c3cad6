"""Which rollup answers which part of a time range: days in the middle, hours beside them,
minutes at the edges — each level only where it is exact for the answer's buckets.

The target database keeps the audit counts per UTC minute, hour and day, twice: per action
and severity (`audit_logs_1m/1h/1d`, a row per bucket, action and severity) and for all
actions together (`audit_totals_1m/1h/1d`, a row per bucket with a column per severity).
A question with `action` reads the first family, any other the second, so a bucket costs
at most five rows, or one, however many actions there are. A range is
counted in whole minutes (a minute counts when it starts in `[since, until)`), so it is
`[a, b)` with both ends on a minute. The plan cuts it into at most five slots:

    a ── minutes ── hours ── days ── hours ── minutes ── b

A level is used only when its buckets nest in the answer's buckets (hours for 1h and 1d
buckets, days for 1d buckets; any level for a plain total), so each rollup row falls in
exactly one answer bucket and the counts equal a `GROUP BY` over the raw rows. The number
of rollup buckets a plan reads is known before any SQL runs; requests that would read more
than :data:`MAX_ROLLUP_BUCKETS` are refused. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: `date_bin` origin: buckets are aligned to UTC (1d buckets are UTC days)
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
#: rollup buckets one request may read (a row each in the totals, at most five per action)
MAX_ROLLUP_BUCKETS = 5000
#: the slots of a plan in time order, with the table each reads and its bucket width
SLOTS: tuple[tuple[str, str, timedelta], ...] = (
    ("m1", "audit_logs_1m", MINUTE),
    ("h1", "audit_logs_1h", HOUR),
    ("d", "audit_logs_1d", DAY),
    ("h2", "audit_logs_1h", HOUR),
    ("m2", "audit_logs_1m", MINUTE),
)


#: per-action rollup → the all-actions totals of the same bucket width
TOTALS = {
    "audit_logs_1m": "audit_totals_1m",
    "audit_logs_1h": "audit_totals_1h",
    "audit_logs_1d": "audit_totals_1d",
}
#: the severities, in answer order; the totals have one column each
SEVERITIES = ("debug", "info", "warning", "error", "critical")


def floor_to(t: datetime, width: timedelta) -> datetime:
    """The start of the UTC-aligned bucket of `width` that holds `t`."""
    return ORIGIN + ((t - ORIGIN) // width) * width


def ceil_to(t: datetime, width: timedelta) -> datetime:
    """The first UTC-aligned bucket boundary of `width` at or after `t`."""
    return ORIGIN - ((ORIGIN - t) // width) * width


def minute_range(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The whole minutes whose start lies in `[since, until)`, as `[a, b)`."""
    return ceil_to(since, MINUTE), max(ceil_to(since, MINUTE), ceil_to(until, MINUTE))


@dataclass(frozen=True, slots=True)
class Plan:
    """Five `[lo, hi)` slots (see :data:`SLOTS`); an empty slot has `lo == hi`."""

    m1: tuple[datetime, datetime]
    h1: tuple[datetime, datetime]
    d: tuple[datetime, datetime]
    h2: tuple[datetime, datetime]
    m2: tuple[datetime, datetime]

    @property
    def buckets(self) -> int:
        """Rollup buckets read: rows without an action filter, at most 5 × that with one."""
        return sum(
            (hi - lo) // width for (lo, hi), (_, _, width) in zip(self.slots(), SLOTS, strict=True)
        )

    def slots(self) -> tuple[tuple[datetime, datetime], ...]:
        return (self.m1, self.h1, self.d, self.h2, self.m2)

    def params(self) -> dict[str, datetime]:
        """Bind parameters `<slot>_lo` / `<slot>_hi` for :func:`union_sql`."""
        out: dict[str, datetime] = {}
        for (name, _, _), (lo, hi) in zip(SLOTS, self.slots(), strict=True):
            out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
        return out


def plan(since: datetime, until: datetime, width: timedelta | None) -> Plan:
    """The plan for the minutes of `[since, until)` answered in buckets of `width`
    (UTC-aligned; None: one total, any level will do)."""
    a, b = minute_range(since, until)
    empty = (a, a)
    use_hours = width is None or (width >= HOUR and width % HOUR == timedelta(0))
    use_days = width is None or (width >= DAY and width % DAY == timedelta(0))
    h0, h1 = ceil_to(a, HOUR), floor_to(b, HOUR)
    if not use_hours or h0 >= h1:
        return Plan((a, b), empty, empty, empty, empty)
    d0, d1 = ceil_to(a, DAY), floor_to(b, DAY)
    if not use_days or d0 >= d1:
        return Plan((a, h0), (h0, h1), empty, empty, (h1, b))
    return Plan((a, h0), (h0, d0), (d0, d1), (d1, h1), (h1, b))


def union_sql(per_action: bool) -> str:
    """The five slots as one UNION ALL, each slot a range scan of its rollup's primary key
    (or `(action, bucket)` index). `per_action`: rows `(bucket, severity, events)` of one
    action, `%(action)s`; otherwise rows `(bucket, debug, info, warning, error, critical)` of
    the all-actions totals."""
    cols = "bucket, severity, events" if per_action else "bucket, " + ", ".join(SEVERITIES)
    cond = " AND action = %(action)s" if per_action else ""
    parts = [
        f"SELECT {cols} FROM {table if per_action else TOTALS[table]}"  # noqa: S608
        f" WHERE bucket >= %({name}_lo)s AND bucket < %({name}_hi)s{cond}"
        for name, table, _ in SLOTS
    ]
    return "\n    UNION ALL\n    ".join(parts)
