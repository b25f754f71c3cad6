"""The notifier's heartbeat reports backlog and lag only while they are being measured:
a figure that stopped arriving (source database gone) becomes null — "no data" for the
metrics API and the alerter — instead of repeating its last value forever."""

from __future__ import annotations

from bridge_notifier.metrics import RelayMetrics
from prometheus_client import CollectorRegistry


def test_stale_figures_are_reported_as_null() -> None:
    m = RelayMetrics(CollectorRegistry(), stats_stale_after=3600)
    assert m.status()["lag_seconds"] is None  # never measured
    m.set_stats(7, 0.25)
    assert m.status()["lag_seconds"] == 0.25 and m.status()["outbox_backlog"] == 7
    m.stats_stale_after = -1.0  # the last measurement is now older than the bound
    status = m.status()
    assert status["lag_seconds"] is None and status["outbox_backlog"] is None
    m.stats_stale_after = 3600
    m.set_stats(0, 0.0)  # measured again: reported again
    assert m.status()["lag_seconds"] == 0.0
