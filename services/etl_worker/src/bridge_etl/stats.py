"""What the worker reports: rows moved, rows/s, lag, dead letters (Prometheus + heartbeat).

Lag is "now − created_at of the oldest source row the worker holds but has not committed",
and between batches the freshness of the newest row it inserted (commit time − created_at);
0 once a source has nothing new. So a stalled worker's lag grows, a caught-up one reads 0.
A repair (event mode) re-reads old rows on purpose and does not count towards the lag.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from bridge_common.lag import LAG_BUCKETS, RecentQuantiles, id_seconds
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .jobs import JobState

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
        self._jobs: list[JobState] | None = None  # Timescale path, once read
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
        self.m_store_lag = Histogram(
            "bridge_etl_store_lag_seconds",
            "From the event's publish (its id) to its load committed in the target, per topic",
            ["topic"],
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.recent_lag = RecentQuantiles(self.m_store_lag)
        self.m_watermark = Gauge(
            "bridge_etl_polling_watermark",
            "Source id up to which polling is settled",
            registry=registry,
        )
        self.m_refreshes = Counter(
            "bridge_etl_aggregate_refreshes",
            "Refreshes of audit_logs_1m over buckets late rows landed in (Timescale)",
            registry=registry,
        )
        self.m_refreshed = Counter(
            "bridge_etl_aggregate_refreshed_seconds",
            "Span of time re-aggregated by those refreshes (Timescale)",
            registry=registry,
        )
        job = ["job_id", "proc_name", "relation"]
        self.m_job_failing = Gauge(
            "bridge_etl_timescale_job_failing",
            "1 when the TimescaleDB job's last run failed",
            job,
            registry=registry,
        )
        self.m_job_failures = Gauge(
            "bridge_etl_timescale_job_failures",
            "Failed runs of the TimescaleDB job (timescaledb_information.job_stats)",
            job,
            registry=registry,
        )
        self.m_job_success_age = Gauge(
            "bridge_etl_timescale_job_last_success_age_seconds",
            "Seconds since the TimescaleDB job last succeeded (absent if it never did)",
            job,
            registry=registry,
        )
        self.m_jobs_failing = Gauge(
            "bridge_etl_timescale_jobs_failing",
            "TimescaleDB policy jobs whose last run failed",
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

    def store_lag(self, topic: str, ids: Sequence[bytes | str], now: float) -> None:
        observe = self.m_store_lag.labels(topic).observe
        for i in ids:
            at = id_seconds(i)
            if at is not None:
                observe(now - at if now > at else 0.0)

    def dead_lettered(self, origin: str, n: int) -> None:
        self.dead_letters_total += n
        self.m_dead.labels(origin).inc(n)

    def expired(self, n: int) -> None:
        self.expired_total += n
        self.m_expired.inc(n)

    def refreshed(self, span: timedelta) -> None:
        self.m_refreshes.inc()
        self.m_refreshed.inc(span.total_seconds())

    def jobs(self, jobs: Sequence[JobState], now: datetime) -> None:
        """The TimescaleDB jobs' state as just read (replaces what was read before)."""
        self._jobs = list(jobs)
        for g in (self.m_job_failing, self.m_job_failures, self.m_job_success_age):
            g.clear()
        for j in jobs:
            labels = (str(j.job_id), j.proc_name, j.relation)
            self.m_job_failing.labels(*labels).set(1 if j.failing else 0)
            self.m_job_failures.labels(*labels).set(j.total_failures)
            if j.last_successful_finish is not None:
                age = max(0.0, (now - j.last_successful_finish).total_seconds())
                self.m_job_success_age.labels(*labels).set(age)
        self.m_jobs_failing.set(sum(j.failing for j in jobs))

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
        """Heartbeat facts; the metrics API reads `lag_seconds` and
        `timescale_jobs_failing`."""
        out: dict[str, Any] = {
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
            # publish → store per topic over the last minute: {topic: {p50, p99, count}}
            "store_lag": self.recent_lag.read(),
        }
        if self._jobs is not None:
            failing = [j for j in self._jobs if j.failing]
            out["timescale_jobs"] = len(self._jobs)
            out["timescale_jobs_failing"] = len(failing)
            out["timescale_failing_jobs"] = [j.label for j in failing]
        return out
