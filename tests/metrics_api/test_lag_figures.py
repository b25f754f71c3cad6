"""Delivery lag in the overview and the snapshot (issue #18), in-process: per hop and per
topic, the worst instance's recent p50/p99 from the heartbeats; the worst topic under the
fixed names, each topic under `<name>.<topic>`; null when no event passed a hop."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from bridge_common.events import Heartbeat
from bridge_common.snapshots import LAG_METRICS, SNAPSHOT_METRICS, known_metric
from bridge_metrics_api import live
from bridge_metrics_api.overview import Overview, snapshot_metrics


def _instance(service: str, name: str, **status: object) -> live.Instance:
    now = time.time()
    hb = Heartbeat(
        service=service, instance=name, ts=now, started_at=now, interval=1.0, status=dict(status)
    )
    return live.Instance(hb=hb, up=True, age=0.0)


def _overview(found: list[live.Instance]) -> Overview:
    return Overview(
        ts=datetime.now(UTC),
        intents=None,
        audit=None,
        live=live.figures(found),
        instances=found,
        alerts=[],
        errors={},
    )


def test_lag_per_hop_and_topic_is_the_worst_instance() -> None:
    found = [
        _instance(
            "gateway",
            "g1",
            connections=1,
            delivery_lag={"intents": {"p50": 0.01, "p99": 0.2, "count": 5}},
        ),
        _instance(
            "gateway",
            "g2",
            connections=1,
            delivery_lag={
                "intents": {"p50": 0.02, "p99": 0.1, "count": 5},
                "audit_logs": {"p50": 0.5, "p99": 3.0, "count": 1},
                "bad": "not a dict",
            },
        ),
        _instance(
            "notifier",
            "n1",
            leader=True,
            commit_lag={"intents": {"p50": 0.004, "p99": 0.05, "count": 10}},
        ),
        _instance("etl", "e1", store_lag={}),
    ]
    ov = _overview(found)
    assert ov.live is not None
    assert ov.live.lag["delivery"] == {
        "intents": {"p50": 0.02, "p99": 0.2},
        "audit_logs": {"p50": 0.5, "p99": 3.0},
    }
    assert ov.as_json()["lag"]["commit"] == {"intents": {"p50": 0.004, "p99": 0.05}}
    m = snapshot_metrics(ov)
    assert m["gateway.delivery_lag_p99_seconds"] == 3.0  # the worst topic
    assert m["gateway.delivery_lag_p50_seconds"] == 0.5
    assert m["gateway.delivery_lag_p99_seconds.intents"] == 0.2
    assert m["gateway.delivery_lag_p99_seconds.audit_logs"] == 3.0
    assert m["notifier.commit_lag_p99_seconds.intents"] == 0.05
    assert m["etl.store_lag_p99_seconds"] is None  # nothing passed that hop
    assert LAG_METRICS <= SNAPSHOT_METRICS
    assert all(known_metric(name) for name in m)


def test_no_lag_reported_gives_exactly_the_fixed_names_as_null() -> None:
    m = snapshot_metrics(_overview([_instance("gateway", "g1", connections=0)]))
    assert set(m) == SNAPSHOT_METRICS
    assert all(m[name] is None for name in LAG_METRICS)
