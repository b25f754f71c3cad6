"""Delivery lag over a window (`GET /api/v1/dashboard/lag`): per topic and hop, the worst
p99 and a short series, read back from the metrics snapshot stream.

Every snapshot (each `BRIDGE_SNAPSHOT_INTERVAL`) carries each topic's last-minute p99 per
hop as `<hop metric>.<topic>`; the stream keeps a day of them, so the last hour is at most
a few hundred entries — no extra state, and every replica answers the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from bridge_common.channels import Channels
from bridge_common.redis import AnyRedis
from bridge_common.snapshots import snapshot_from_entry

from .errors import InvalidParameter
from .params import Param, check_known

#: windows the dashboard and operators may ask for (seconds)
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600}
DEFAULT_WINDOW = "1h"
#: snapshot entries read at most (6 h of 10-second snapshots, and then some)
MAX_ENTRIES = 2_500
#: points per series (each the worst p99 of its slice of the window)
POINTS = 60
#: topics answered at most (the worst first)
MAX_TOPICS = 20
#: hop → the per-topic p99 metric's prefix in the snapshot
HOPS = {
    "commit": "notifier.commit_lag_p99_seconds.",
    "delivery": "gateway.delivery_lag_p99_seconds.",
    "store": "etl.store_lag_p99_seconds.",
}

LAG_PARAMS = (
    Param(
        "window",
        "How far back: the worst p99 per topic and hop over it, and a series of "
        f"{POINTS} points (each the worst p99 of its slice; null where no event passed).",
        {"type": "string", "enum": list(WINDOWS), "default": DEFAULT_WINDOW},
    ),
)


def parse_window(query: Mapping[str, str], names: list[str]) -> str:
    check_known(query, LAG_PARAMS, names)
    window = query.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        raise InvalidParameter("window", f"must be one of {', '.join(WINDOWS)}")
    return window


def fold(
    entries: list[tuple[float, Mapping[str, float | None]]], since: float, until: float
) -> dict[str, dict[str, Any]]:
    """Per topic and hop: the worst p99 and `POINTS` slices of the window (sans-I/O)."""
    width = (until - since) / POINTS
    out: dict[str, dict[str, Any]] = {}
    for ts, metrics in entries:
        if not since <= ts <= until:
            continue
        slot = min(POINTS - 1, int((ts - since) / width))
        for name, value in metrics.items():
            if value is None or not math.isfinite(value):
                continue
            for hop, prefix in HOPS.items():
                if name.startswith(prefix) and len(name) > len(prefix):
                    topic = name[len(prefix) :]
                    hops = out.setdefault(topic, {})
                    cur = hops.get(hop)
                    if cur is None:
                        cur = hops[hop] = {"p99_max": value, "series": [None] * POINTS}
                    cur["p99_max"] = max(cur["p99_max"], value)
                    s = cur["series"]
                    s[slot] = value if s[slot] is None else max(s[slot], value)
                    break
    worst = sorted(out, key=lambda t: -max(h["p99_max"] for h in out[t].values()))
    return {t: out[t] for t in worst[:MAX_TOPICS]}


async def lag_history(
    redis: AnyRedis, channels: Channels, window: str, now: float
) -> dict[str, Any]:
    since = now - WINDOWS[window]
    raw: Any = await redis.xrange(
        channels.snapshot_stream, min=str(int(since * 1000)), max="+", count=MAX_ENTRIES
    )
    entries: list[tuple[float, Mapping[str, float | None]]] = []
    for _id, fields in raw or []:
        try:
            snap = snapshot_from_entry(fields or {})
        except (ValueError, msgspec.MsgspecError):
            continue  # a foreign or damaged entry is skipped, never fatal
        entries.append((snap.ts, snap.metrics))
    return {
        "window": window,
        "since": _iso(since),
        "until": _iso(now),
        "points": POINTS,
        "topics": fold(entries, since, now),
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
