"""Delivery lag as a first-class signal: the histogram buckets every hop shares, the
publish time read back from an event id, and recent quantiles read from a histogram.

Three hops, one histogram each, per topic (docs/runbook.md, "Delivery lag"): commit →
relay publish (`bridge_notifier_commit_lag_seconds`), publish → gateway send
(`bridge_gateway_delivery_lag_seconds`), publish → ETL store
(`bridge_etl_store_lag_seconds`). An event id is `<ms>-<n>` with `ms` the time the relay
assigned it just before publishing, so the later hops need no clock of their own in the
event. :class:`RecentQuantiles` turns a cumulative histogram into p50/p99 over the last
minute or so for heartbeats (hence the metrics snapshot and the alerter) without touching
the hot path: it only reads the histogram's buckets when asked.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

#: 1 ms … 60 s, about three buckets per decade
LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def id_seconds(event_id: bytes | str) -> float | None:
    """The publish time (s since the epoch) an event id carries; None when it has none."""
    if isinstance(event_id, str):
        event_id = event_id.encode()
    ms = event_id.partition(b"-")[0]
    if not ms.isdigit():
        return None
    return int(ms) / 1000.0


def quantile(q: float, bounds: list[float], counts: list[float]) -> float | None:
    """The `q` quantile of a histogram given its upper bounds (the last may be +Inf) and
    cumulative counts, interpolated within the bucket (as PromQL's histogram_quantile);
    None when it holds nothing."""
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bucket: its bound is all we know
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


class RecentQuantiles:
    """p50/p99 per topic of a `topic`-labelled prometheus Histogram over roughly the last
    `window` seconds: each call keeps the cumulative bucket counts, and the figures are
    the difference against the newest reading at least `window` old (or the oldest kept,
    or none at the first call)."""

    def __init__(
        self, histogram: Any, window: float = 60.0, keep: int = 64, max_topics: int = 50
    ) -> None:
        self.histogram = histogram
        self.window = window
        #: a heartbeat carries at most this many topics: the slowest (by p99)
        self.max_topics = max_topics
        self._past: deque[tuple[float, dict[str, tuple[list[float], list[float]]]]] = deque(
            maxlen=keep
        )

    def _read(self) -> dict[str, tuple[list[float], list[float]]]:
        out: dict[str, tuple[list[float], list[float]]] = {}
        for metric in self.histogram.collect():
            for s in metric.samples:
                if not s.name.endswith("_bucket"):
                    continue
                topic = s.labels.get("topic")
                if topic is None:
                    continue
                bounds, counts = out.setdefault(topic, ([], []))
                bounds.append(float(s.labels["le"]))
                counts.append(float(s.value))
        return out

    def read(self, now: float | None = None) -> dict[str, dict[str, float | int | None]]:
        """{topic: {"p50": s, "p99": s, "count": n}} for topics with events in the window
        (the `max_topics` slowest by p99 when more had some)."""
        now = time.monotonic() if now is None else now
        current = self._read()
        base: dict[str, tuple[list[float], list[float]]] = {}
        # the base is the newest reading at least `window` old, else the oldest one kept
        while len(self._past) > 1 and now - self._past[1][0] >= self.window:
            self._past.popleft()
        if self._past:
            base = self._past[0][1]
        self._past.append((now, current))
        result: dict[str, dict[str, float | int | None]] = {}
        for topic, (bounds, counts) in current.items():
            # a topic the base lacks (or the first reading): all its events are recent
            before = base.get(topic)
            if before is not None and before[0] == bounds:
                counts = [c - b for c, b in zip(counts, before[1], strict=True)]
            if not counts or counts[-1] <= 0:
                continue
            p50, p99 = quantile(0.5, bounds, counts), quantile(0.99, bounds, counts)
            result[topic] = {
                "p50": None if p50 is None else round(p50, 4),
                "p99": None if p99 is None else round(p99, 4),
                "count": int(counts[-1]),
            }
        if len(result) > self.max_topics:
            slowest = sorted(result, key=lambda t: result[t]["p99"] or 0.0, reverse=True)
            result = {t: result[t] for t in slowest[: self.max_topics]}
        return result
