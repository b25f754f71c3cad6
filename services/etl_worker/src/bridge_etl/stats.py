"""What the worker reports: rows moved, rows/s, lag, dead letters (Prometheus + heartbeat).

Lag is "now − created_at of the oldest source row the worker holds but has not committed",
and between batches the freshness of the newest row it inserted (commit time − created_at);
0 once a source has nothing new. So a stalled worker's lag grows, a caught-up one reads 0.
A repair (event mode) re-reads old rows on purpose and does not count towards the lag.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: origins that re-read old rows on purpose: their rows' age is not the worker's lag (a
#: repair re-reads the source from the watermark; its progress is in its own metrics)
UNTIMED_ORIGINS = frozenset({"repair"})


class EtlStats:
    """Counters of one worker process, per origin (`polling`, `stream`, `backfill`)."""

    def __init__(self, registry: CollectorRegistry, *, mode: str) -> None:
        self.mode = mode
        self.path = "unknown"
        self.rows_total = 0
        self.duplicates_total = 0
        self.dead_letters_total = 0
        self.expired_total = 0
        self.watermark: int | None = None
        self.rows_by_origin: dict[str, int] = {}
        self.stream_losses_total = 0
        self.repairs_total = 0
        self.last_loss: str | None = None
        self._in_flight: dict[str, float] = {}
        self._last_lag: dict[str, float] = {}
        self._rate = 0.0
        self._rate_mark = (time.monotonic(), 0)
        self.m_rows = Counter(
            "bridge_etl_rows", "Rows inserted into audit_logs_ts", ["origin"], registry=registry
        )
        self.m_duplicates = Counter(
            "bridge_etl_duplicate_rows",
            "Rows already in the target (replays, hybrid overlap)",
            ["origin"],
            registry=registry,
        )
        self.m_dead = Counter(
            "bridge_etl_dead_letters",
            "Rows sent to the dead-letter stream",
            ["origin"],
            registry=registry,
        )
        self.m_expired = Counter(
            "bridge_etl_expired_rows",
            "Rows older than the retention, not loaded",
            registry=registry,
        )
        self.m_lag = Gauge(
            "bridge_etl_lag_seconds", "Seconds the target trails the source", registry=registry
        )
        self.m_rate = Gauge(
            "bridge_etl_rows_per_second", "Rows inserted per second, recent", registry=registry
        )
        self.m_batch = Histogram(
            "bridge_etl_batch_seconds",
            "Time to load one batch",
            ["origin"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.m_watermark = Gauge(
            "bridge_etl_polling_watermark",
            "Source id up to which polling is settled",
            registry=registry,
        )

        self.m_losses = Counter(
            "bridge_etl_stream_losses",
            "Times the audit_logs stream was found to have lost entries the group had not"
            " loaded (trimmed, group or stream lost, Redis went back)",
            ["reason"],
            registry=registry,
        )
        self.m_repairs = Counter(
            "bridge_etl_repairs",
            "Completed repairs from the source table (event mode)",
            ["reason"],
            registry=registry,
        )

    # -- lag --------------------------------------------------------------------------
    def holding(self, origin: str, oldest: datetime | None) -> None:
        """Rows read from `origin`, not yet committed; `oldest` is their oldest created_at."""
        if origin in UNTIMED_ORIGINS:
            return
        if oldest is not None:
            self._in_flight[origin] = oldest.timestamp()

    def committed(self, origin: str, newest_inserted: datetime | None) -> None:
        if origin in UNTIMED_ORIGINS:
            return
        self._in_flight.pop(origin, None)
        if newest_inserted is not None:
            self._last_lag[origin] = max(0.0, time.time() - newest_inserted.timestamp())

    def idle(self, origin: str) -> None:
        """`origin` had nothing new: nothing waits, the lag is 0."""
        if origin in UNTIMED_ORIGINS:
            return
        self._in_flight.pop(origin, None)
        self._last_lag[origin] = 0.0

    def lag_seconds(self) -> float:
        now = time.time()
        lags = [now - ts for ts in self._in_flight.values()]
        lags += [v for k, v in self._last_lag.items() if k not in self._in_flight]
        lag = max(lags, default=0.0)
        self.m_lag.set(lag)
        return max(0.0, lag)

    # -- counts -----------------------------------------------------------------------
    def loaded(self, origin: str, inserted: int, duplicates: int, seconds: float) -> None:
        self.rows_total += inserted
        self.rows_by_origin[origin] = self.rows_by_origin.get(origin, 0) + inserted
        self.duplicates_total += duplicates
        self.m_rows.labels(origin).inc(inserted)
        self.m_duplicates.labels(origin).inc(duplicates)
        self.m_batch.labels(origin).observe(seconds)

    def dead_lettered(self, origin: str, n: int) -> None:
        self.dead_letters_total += n
        self.m_dead.labels(origin).inc(n)

    def expired(self, n: int) -> None:
        self.expired_total += n
        self.m_expired.inc(n)

    def stream_loss(self, reason: str) -> None:
        self.stream_losses_total += 1
        self.last_loss = reason
        self.m_losses.labels(reason).inc()

    def repaired(self, reason: str) -> None:
        self.repairs_total += 1
        self.m_repairs.labels(reason).inc()

    def set_watermark(self, value: int) -> None:
        self.watermark = value
        self.m_watermark.set(value)

    def rows_per_second(self) -> float:
        now = time.monotonic()
        t0, n0 = self._rate_mark
        if now - t0 >= 1.0:
            self._rate = (self.rows_total - n0) / (now - t0)
            self._rate_mark = (now, self.rows_total)
            self.m_rate.set(self._rate)
        return self._rate

    def status(self) -> dict[str, Any]:
        """Heartbeat facts; the metrics API reads `lag_seconds`."""
        return {
            "mode": self.mode,
            "path": self.path,
            "lag_seconds": round(self.lag_seconds(), 3),
            "rows_total": self.rows_total,
            "rows_per_second": round(self.rows_per_second(), 1),
            "duplicates_total": self.duplicates_total,
            "dead_letters_total": self.dead_letters_total,
            "expired_total": self.expired_total,
            "watermark": self.watermark,
            "stream_losses_total": self.stream_losses_total,
            "last_stream_loss": self.last_loss,
            "repairs_total": self.repairs_total,
        }
