"""Prometheus metrics of the gateway (registered once per process)."""

from __future__ import annotations

from collections.abc import Iterator

from bridge_common.lag import LAG_BUCKETS, RecentQuantiles
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric
from prometheus_client.core import CounterMetricFamily

CONNECTIONS = Gauge("bridge_gateway_connections", "Open client connections", ["transport"])
SUBSCRIPTIONS = Gauge("bridge_gateway_subscriptions", "Active topic subscriptions")
EVENTS_IN = Counter(
    "bridge_gateway_events_in_total", "Events received from Redis (live and gap fill)", ["topic"]
)
EVENTS_OUT = Counter(
    "bridge_gateway_events_out_total", "Event deliveries queued to client connections"
)
REPLAYED = Counter(
    "bridge_gateway_events_replayed_total", "Events replayed to resuming clients (either tier)"
)
FROM_HISTORY_DB = Counter(
    "bridge_gateway_history_db_events_total",
    "Events read from the PostgreSQL history (resume or gap fill beyond Redis's window)",
)
SLOW_DROPPED = Counter(
    "bridge_gateway_slow_clients_dropped_total", "Clients cut off because they fell behind"
)
CUT = Counter("bridge_gateway_clients_cut_total", "Clients closed by the gateway", ["reason"])
REJECTED = Counter(
    "bridge_gateway_rejected_total", "Connections refused before upgrade", ["status"]
)
HISTORY_LOST = Counter(
    "bridge_gateway_history_lost_total", "Resumes whose position was older than the history"
)
REDIS_RECONNECTS = Counter(
    "bridge_gateway_redis_reconnects_total", "Times the live Redis connection was re-established"
)
FANOUT_LATENCY = Histogram(
    "bridge_gateway_fanout_latency_seconds",
    "From the event's append to its stream (Redis clock) to queued on every matching client",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PRESENCE_FRAMES = Counter(
    "bridge_gateway_presence_frames_total", "Presence frames built (each sent to every watcher)"
)
PRESENCE_WRITES = Counter(
    "bridge_gateway_presence_writes_total",
    "Presence changes written to Redis (one per topic batch)",
)
PRESENCE_INFO_DROPPED = Counter(
    "bridge_gateway_presence_info_dropped_total",
    "Clients listed with info null because their token's info claim was too large",
)
DELIVERY_LAG = Histogram(
    "bridge_gateway_delivery_lag_seconds",
    "From the event's publish (the time in its id) to queued on every matching client, "
    "per topic (live fan-out only, not replays)",
    ["topic"],
    buckets=LAG_BUCKETS,
)
#: p50/p99 of DELIVERY_LAG per topic over the last minute, for the heartbeat
RECENT_DELIVERY_LAG = RecentQuantiles(DELIVERY_LAG)


class SseWrites:
    """`bridge_gateway_sse_writes_total{mode}`: plain integers on the hot path (one per
    event and SSE connection), read by Prometheus at scrape time."""

    def __init__(self) -> None:
        self.immediate = 0
        self.coalesced = 0

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "bridge_gateway_sse_writes",
            "SSE event writes: `immediate` went to an idle connection at once, `coalesced` "
            "joined a backlog that goes out in one write when the socket drains",
            labels=["mode"],
        )
        family.add_metric(["immediate"], self.immediate)
        family.add_metric(["coalesced"], self.coalesced)
        yield family


SSE_WRITES = SseWrites()
REGISTRY.register(SSE_WRITES)
