"""Prometheus metrics of the relay, and the heartbeat status built from the same facts."""

from __future__ import annotations

import time
from typing import Any

from bridge_common.lag import LAG_BUCKETS, RecentQuantiles
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    """Every metric the notifier exports; one instance per process."""

    def __init__(self, registry: CollectorRegistry, *, stats_stale_after: float = 10.0) -> None:
        #: backlog and lag measured longer ago than this are not reported (null): a figure
        #: that stopped being measured (database gone) must not look current
        self.stats_stale_after = stats_stale_after
        self._stats_at: float | None = None
        self.published = Counter(
            "bridge_notifier_events_published",
            "Events appended to a topic stream and fanned out",
            ["topic"],
            registry=registry,
        )
        self.duplicates = Counter(
            "bridge_notifier_duplicates_dropped",
            "Events already in Redis (re-published after a crash), skipped by the script",
            registry=registry,
        )
        self.republished = Counter(
            "bridge_notifier_history_republished",
            "History events published again because Redis may not have been given them",
            registry=registry,
        )
        self.redis_data_lost = Counter(
            "bridge_notifier_redis_data_lost",
            "Publishes that found a topic's stream missing or behind (Redis lost data)",
            registry=registry,
        )
        self.too_large = Counter(
            "bridge_notifier_events_too_large",
            "Rows larger than BRIDGE_MAX_EVENT_BYTES, published without their data",
            registry=registry,
        )
        self.partitions_dropped = Counter(
            "bridge_notifier_history_partitions_dropped",
            "History partitions dropped past BRIDGE_HISTORY_RETENTION",
            registry=registry,
        )
        self.rejected = Counter(
            "bridge_notifier_rows_rejected",
            "Outbox rows that cannot become an event (invalid topic), logged and pruned",
            registry=registry,
        )
        self.redis_errors = Counter(
            "bridge_notifier_redis_errors",
            "Publish attempts that failed because Redis did not answer",
            registry=registry,
        )
        self.db_reconnects = Counter(
            "bridge_notifier_db_reconnects",
            "Times the outbox connection was lost and re-opened",
            registry=registry,
        )
        self.backlog = Gauge(
            "bridge_notifier_outbox_backlog",
            "Committed outbox rows not yet published",
            registry=registry,
        )
        self.lag = Gauge(
            "bridge_notifier_lag_seconds",
            "Age of the oldest unpublished outbox row (now - its insert time)",
            registry=registry,
        )
        self.leader = Gauge(
            "bridge_notifier_leader",
            "1 while this instance holds the leader lock and relays, else 0",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "bridge_notifier_batch_seconds",
            "Time to read, publish and prune one outbox batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        self.commit_lag = Histogram(
            "bridge_notifier_commit_lag_seconds",
            "From the row's commit (else its insert) to its event appended to Redis, per topic",
            ["topic"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._commit_lag: dict[str, Any] = {}
        self.recent_lag = RecentQuantiles(self.commit_lag)
        self.published_total = 0
        self.is_leader = False
        self.last_backlog: int | None = None
        self.last_lag: float | None = None

    def set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        self.leader.set(1 if leader else 0)

    def set_stats(self, backlog: int, lag: float) -> None:
        self._stats_at = time.monotonic()
        self.last_backlog = backlog
        self.last_lag = lag
        self.backlog.set(backlog)
        self.lag.set(lag)

    def count_published(self, topic: str, n: int) -> None:
        if n:
            self.published.labels(topic).inc(n)
            self.published_total += n

    def observe_commit_lag(self, committed: dict[str, list[float]], now: float) -> None:
        """One observation per published event (`committed`: per topic, commit times)."""
        for topic, times in committed.items():
            child = self._commit_lag.get(topic)
            if child is None:
                child = self._commit_lag[topic] = self.commit_lag.labels(topic)
            observe = child.observe
            for t in times:
                observe(now - t if now > t else 0.0)

    def status(self) -> dict[str, Any]:
        """Heartbeat facts; the metrics API reads exactly these keys."""
        fresh = (
            self._stats_at is not None
            and time.monotonic() - self._stats_at <= self.stats_stale_after
        )
        lag = self.last_lag if fresh else None
        return {
            "leader": self.is_leader,
            "lag_seconds": None if lag is None else round(lag, 3),
            "outbox_backlog": self.last_backlog if fresh else None,
            "published_total": self.published_total,
            # commit → publish per topic over the last minute: {topic: {p50, p99, count}}
            "commit_lag": self.recent_lag.read(),
        }
