"""`GET /api/v1/dashboard/lag` (issue #18): the worst last-minute p99 per topic and hop over a
window, read back from the snapshot stream — folded in-process, then through the running
metrics API with snapshots written into its stream."""

from __future__ import annotations

import time

import httpx
import msgspec
from bridge_common.channels import Channels
from bridge_common.events import MetricsSnapshot
from bridge_metrics_api.lag_history import MAX_TOPICS, POINTS, fold

from tests.support.ops import OPS

D = "gateway.delivery_lag_p99_seconds."
C = "notifier.commit_lag_p99_seconds."


def test_fold_keeps_the_worst_p99_per_topic_and_hop_and_slices_the_window() -> None:
    since, until = 1_000.0, 1_000.0 + 3600
    entries = [
        (since - 1, {D + "intents": 99.0}),  # before the window: ignored
        (since + 10, {D + "intents": 0.2, C + "intents": 0.01, D + "a.b.c": 0.5}),
        (since + 20, {D + "intents": 0.7, "gateway.delivery_lag_p99_seconds": 0.7}),
        (until - 5, {D + "intents": 0.1, D + "a.b.c": None, "audit.events_5m": 3.0}),
        (until + 1, {D + "intents": 50.0}),  # after: ignored
    ]
    out = fold(entries, since, until)
    assert list(out) == ["intents", "a.b.c"]  # worst first; dots belong to the topic
    d = out["intents"]["delivery"]
    assert d["p99_max"] == 0.7
    assert len(d["series"]) == POINTS
    assert d["series"][0] == 0.7 and d["series"][-1] == 0.1
    assert d["series"][1:-1] == [None] * (POINTS - 2)
    assert out["intents"]["commit"]["p99_max"] == 0.01
    assert "store" not in out["intents"]
    assert out["a.b.c"] == {"delivery": {"p99_max": 0.5, "series": [0.5] + [None] * (POINTS - 1)}}


def test_fold_answers_the_worst_topics_only() -> None:
    entries = [(5.0, {D + f"t{i}": float(i) for i in range(MAX_TOPICS + 5)})]
    out = fold(entries, 0.0, 10.0)
    assert len(out) == MAX_TOPICS
    assert list(out)[0] == f"t{MAX_TOPICS + 4}"


def test_lag_endpoint_reads_the_snapshot_stream(api, r, namespace) -> None:
    stream = Channels(namespace).snapshot_stream
    now = time.time()
    for ts, p99 in ((now - 1800, 1.5), (now - 600, 0.25), (now - 7200, 40.0)):
        snap = MetricsSnapshot(ts=ts, metrics={D + "lag_probe": p99, C + "lag_probe": p99 / 10})
        r.xadd(stream, {"snapshot": msgspec.json.encode(snap)})
    r.xadd(stream, {"snapshot": b"not json"})  # a damaged entry is skipped
    body = httpx.get(api.url + "/api/v1/dashboard/lag", auth=OPS, timeout=10).json()
    assert body["window"] == "1h" and body["points"] == POINTS
    probe = body["topics"]["lag_probe"]
    # the entry stamped two hours ago is outside the hour
    assert probe["delivery"]["p99_max"] == 1.5
    assert probe["commit"]["p99_max"] == 0.15
    assert sum(v is not None for v in probe["delivery"]["series"]) == 2
    short = httpx.get(api.url + "/api/v1/dashboard/lag?window=15m", auth=OPS, timeout=10).json()
    assert short["topics"]["lag_probe"]["delivery"]["p99_max"] == 0.25


def test_lag_endpoint_refuses_bad_parameters(api) -> None:
    for query, name in (
        ("window=2d", "window"),
        ("since=1", "since"),
        ("window=1h&window=6h", "window"),
    ):
        resp = httpx.get(api.url + "/api/v1/dashboard/lag?" + query, auth=OPS, timeout=10)
        assert resp.status_code == 422, (query, resp.text)
        assert resp.json()["parameter"] == name
    assert httpx.get(api.url + "/api/v1/dashboard/lag", timeout=10).status_code == 401
