"""Prometheus metrics of the alerter (served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVALUATIONS = Counter("bridge_alerter_evaluations_total", "Snapshots evaluated")
ALERTS = Gauge("bridge_alerter_alerts", "Alerts by state", ["state"])
TRANSITIONS = Counter("bridge_alerter_transitions_total", "Alert state changes", ["rule", "state"])
NOTIFICATIONS = Counter(
    "bridge_alerter_notifications_total",
    "Notifications by channel and outcome (delivered, expired, rejected, dropped)",
    ["channel", "outcome"],
)
ATTEMPTS = Counter(
    "bridge_alerter_delivery_attempts_total",
    "Delivery attempts by channel and result",
    ["channel", "result"],
)
QUEUE_DEPTH = Gauge("bridge_alerter_queue_depth", "Deliveries waiting per channel", ["channel"])
OUTBOX = Gauge("bridge_alerter_outbox_size", "Notifications not yet acknowledged")
LEADER = Gauge("bridge_alerter_leader", "1 while this instance is the active evaluator")
SNAPSHOT_AGE = Gauge(
    "bridge_alerter_snapshot_age_seconds", "Age of the last evaluated snapshot when evaluated"
)
RELOADS = Counter("bridge_alerter_reloads_total", "Rule reloads", ["result"])
STATES_RESTORED = Counter(
    "bridge_alerter_states_restored_total",
    "Alert states written back after Redis lost them while the leader kept them in memory",
)
REFOUND = Counter(
    "bridge_alerter_refound_total",
    "Firing notices of alerts re-found after a start with no stored state (may repeat one)",
)
SILENCES_RESTORED = Counter(
    "bridge_alerter_silences_restored_total",
    "Running silences written back after Redis lost them",
)
