"""Query parameters: parsing and validation, and their OpenAPI description, in one place.

Every endpoint declares its parameters here; a value that does not parse, is outside its
allow-list or bounds, or a parameter the endpoint does not know, raises
:class:`InvalidParameter` naming it (the API answers 422). Values reach SQL only as bind
parameters, never as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import planner
from .errors import BeyondRetention, InvalidParameter
from .planner import floor_to

#: bucket name → width; the allow-list of `bucket`
BUCKETS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
#: span a timeline covers when `since` is not given
DEFAULT_SPAN: dict[str, timedelta] = {
    "1m": timedelta(hours=1),
    "5m": timedelta(hours=6),
    "15m": timedelta(hours=24),
    "1h": timedelta(days=7),
    "1d": timedelta(days=90),
}
SEVERITIES = planner.SEVERITIES
#: most buckets one timeline answer may hold (a day of minutes fits)
MAX_POINTS = 1500
#: widest corrections range (per-hour series of at most 31 days)
MAX_CORRECTIONS_RANGE = timedelta(days=31)
DEFAULT_CORRECTIONS_RANGE = timedelta(hours=24)
DEFAULT_LIMIT = 20
MAX_LIMIT = 200
#: times outside these bounds are rejected (they are typos, and keep date arithmetic safe)
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)

_ACTION_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
# "+02:00" arrives as " 02:00" when a client forgets to percent-encode the plus sign
_SPACE_OFFSET_RE = re.compile(r"^(.*\d) (\d{2}(:?\d{2})?)$")


@dataclass(frozen=True, slots=True)
class Param:
    """One query parameter of one endpoint: its OpenAPI description."""

    name: str
    description: str
    schema: dict[str, Any]


_TIME_SCHEMA = {"type": "string", "format": "date-time"}

TIMELINE_PARAMS = (
    Param(
        "bucket",
        "Bucket width. Buckets are aligned to UTC (a `1d` bucket is a UTC day).",
        {"type": "string", "enum": list(BUCKETS), "default": "1m"},
    ),
    Param(
        "since",
        "Start (inclusive), ISO 8601 with a time zone (`Z` or `±hh:mm`). Default: `until` "
        "minus 1 h (1m), 6 h (5m), 24 h (15m), 7 d (1h), 90 d (1d). Not before the "
        "rollups' retention (`beyond_retention`).",
        _TIME_SCHEMA,
    ),
    Param(
        "until",
        f"End (exclusive), ISO 8601 with a time zone. Default: now. At most {MAX_POINTS} "
        f"buckets between `since` and `until`, and at most {planner.MAX_ROLLUP_BUCKETS} "
        "rollup buckets read (about 3 d 11 h of `1m`, `5m` or `15m` buckets).",
        _TIME_SCHEMA,
    ),
    Param(
        "action",
        "Only this audit action (e.g. `intent.corrected`); letters, digits, `_ . : -`.",
        {"type": "string", "pattern": _ACTION_RE.pattern, "maxLength": 64},
    ),
    Param(
        "severity",
        "Only these severities, comma-separated.",
        {"type": "string", "example": "error,critical"},
    ),
)

CORRECTIONS_PARAMS = (
    Param(
        "since",
        "Start (inclusive), ISO 8601 with a time zone. Default: `until` − 24 h.",
        _TIME_SCHEMA,
    ),
    Param(
        "until",
        "End (exclusive), ISO 8601 with a time zone. Default: now. At most 31 days after `since`.",
        _TIME_SCHEMA,
    ),
    Param(
        "limit",
        f"How many of the latest corrections to list (1–{MAX_LIMIT}).",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
)


def check_known(query: Mapping[str, str], params: tuple[Param, ...], multi: list[str]) -> None:
    """Reject parameters the endpoint does not know and parameters given twice."""
    known = {p.name for p in params}
    for name in multi:
        if name not in known:
            raise InvalidParameter(name, "unknown parameter")
    seen: set[str] = set()
    for name in multi:
        if name in seen:
            raise InvalidParameter(name, "given more than once")
        seen.add(name)


def parse_time(name: str, raw: str | None) -> datetime | None:
    """An ISO 8601 time that carries a time zone, converted to UTC."""
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        raise InvalidParameter(name, "must not be empty")
    if len(text) > 40:
        raise InvalidParameter(name, "too long for an ISO 8601 time")
    m = _SPACE_OFFSET_RE.match(text)
    if m:
        text = f"{m.group(1)}+{m.group(2)}"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(
            name, "must be an ISO 8601 time with a time zone, e.g. 2026-11-28T17:00:00Z"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidParameter(name, "needs a time zone (Z or ±hh:mm)")
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise InvalidParameter(name, "out of range") from None
    if not EARLIEST <= value < LATEST:
        raise InvalidParameter(name, "must be between 1970 and 2200")
    return value


def parse_bucket(raw: str | None) -> str:
    if raw is None:
        return "1m"
    if raw not in BUCKETS:
        raise InvalidParameter("bucket", f"must be one of {', '.join(BUCKETS)}")
    return raw


def parse_action(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not _ACTION_RE.fullmatch(raw):
        raise InvalidParameter("action", "1-64 characters of letters, digits, '_', '.', ':' or '-'")
    return raw


def parse_severities(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    parts = [p.strip().lower() for p in raw.split(",")]
    if not parts or any(p not in SEVERITIES for p in parts) or len(parts) > len(SEVERITIES):
        raise InvalidParameter("severity", f"comma-separated list of {', '.join(SEVERITIES)}")
    return sorted(set(parts), key=SEVERITIES.index)


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    text = raw.strip()
    # ASCII digits only: str.isdigit() also accepts "٣" and "²"
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    value = int(text)
    if not 1 <= value <= MAX_LIMIT:
        raise InvalidParameter("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return value


@dataclass(frozen=True, slots=True)
class TimelineQuery:
    bucket: str
    since: datetime
    until: datetime
    action: str | None
    severities: list[str] | None

    @property
    def width(self) -> timedelta:
        return BUCKETS[self.bucket]

    def bucket_starts(self) -> list[datetime]:
        """Every bucket start from the one holding `since` up to (not including) `until`."""
        out = []
        t = floor_to(self.since, self.width)
        while t < self.until:
            out.append(t)
            t += self.width
        return out


def _span_text(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    return f"{days} d {rest // 60} h" if days else f"{rest // 60} h"


def check_retention(
    since: datetime, now: datetime, retention: timedelta | None, name: str = "since"
) -> None:
    """Counts older than the rollups' retention are gone: such a range is refused rather
    than answered with zeros that look like a quiet period. `name`: the parameter that
    put `since` there (`until` when `since` was derived from it)."""
    if retention is None:
        return
    oldest = now - retention
    if since < oldest:
        raise BeyondRetention(name, oldest, retention)


def timeline_query(
    query: Mapping[str, str],
    names: list[str],
    now: datetime,
    retention: timedelta | None = None,
) -> TimelineQuery:
    check_known(query, TIMELINE_PARAMS, names)
    bucket = parse_bucket(query.get("bucket"))
    since = parse_time("since", query.get("since"))
    until = parse_time("until", query.get("until")) or now
    if since is None:
        since = until - DEFAULT_SPAN[bucket]
        since = max(since, EARLIEST)
    if since >= until:
        raise InvalidParameter("since", "must be before until")
    width = BUCKETS[bucket]
    points = -(-(until - floor_to(since, width)) // width)
    if points > MAX_POINTS:
        raise InvalidParameter(
            "since",
            f"range too long for bucket={bucket}: at most {MAX_POINTS} buckets "
            f"({width * MAX_POINTS}); narrow since/until or use a wider bucket",
        )
    reads = planner.plan(since, until, width).buckets
    if reads > planner.MAX_ROLLUP_BUCKETS:
        raise InvalidParameter(
            "since",
            f"range too long for bucket={bucket}: it would read {reads} rollup buckets, at "
            f"most {planner.MAX_ROLLUP_BUCKETS} (about {_span_text(planner.MAX_ROLLUP_BUCKETS)}"
            " of 1m, 5m or 15m buckets); narrow since/until or use bucket=1h or 1d",
        )
    check_retention(since, now, retention, "since" if "since" in query else "until")
    return TimelineQuery(
        bucket=bucket,
        since=since,
        until=until,
        action=parse_action(query.get("action")),
        severities=parse_severities(query.get("severity")),
    )


@dataclass(frozen=True, slots=True)
class CorrectionsQuery:
    since: datetime
    until: datetime
    limit: int


def corrections_query(
    query: Mapping[str, str],
    names: list[str],
    now: datetime,
    retention: timedelta | None = None,
) -> CorrectionsQuery:
    check_known(query, CORRECTIONS_PARAMS, names)
    since = parse_time("since", query.get("since"))
    until = parse_time("until", query.get("until")) or now
    if since is None:
        since = max(until - DEFAULT_CORRECTIONS_RANGE, EARLIEST)
    if since >= until:
        raise InvalidParameter("since", "must be before until")
    if until - since > MAX_CORRECTIONS_RANGE:
        raise InvalidParameter("since", "range longer than 31 days")
    check_retention(since, now, retention, "since" if "since" in query else "until")
    return CorrectionsQuery(since=since, until=until, limit=parse_limit(query.get("limit")))


def no_params(names: list[str]) -> None:
    """Endpoints without parameters still reject unknown ones."""
    check_known({}, (), names)
