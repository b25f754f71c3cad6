"""The settled-bucket cache: answers equal the first, uncached one, the newest minutes are always
fresh, and a row loaded late into an old minute shows up once the cache entry expires."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.metrics_api.seed import AuditRow, add_audit
from tests.support.ops import ops_get
from tests.support.processes import ServiceProcess


def timeline(proc: ServiceProcess, since: datetime, until: datetime) -> dict:
    return ops_get(
        proc.url + "/api/v1/dashboard/timeline",
        params={"bucket": "1m", "since": since.isoformat(), "until": until.isoformat()},
        timeout=10,
    ).json()


def test_cached_answers_match_and_late_rows_appear(api_env, db, tmp_path: Path) -> None:
    cached = ServiceProcess(
        "metrics_api", {**api_env, "BRIDGE_METRICS_BUCKET_CACHE_TTL": "1.5"}, tmp_path
    ).start()
    try:
        now = datetime.now(UTC)
        old = (now - timedelta(minutes=50)).replace(second=30, microsecond=0)
        add_audit(db, [AuditRow(old + timedelta(minutes=i)) for i in range(10)])
        since = now - timedelta(hours=1, seconds=17)  # not on a minute: a partial first bucket
        first = timeline(cached, since, now)
        assert first["totals"]["total"] == 10
        again = timeline(cached, since, now)
        assert again["points"] == first["points"]  # the same minutes, now partly from cache
        assert [p["t"] for p in first["points"] if p["total"]] == [
            (old + timedelta(minutes=i)).replace(second=0).isoformat().replace("+00:00", "Z")
            for i in range(10)
        ]
        # a row in the current minute is never cached
        add_audit(db, [AuditRow(datetime.now(UTC), severity="error")])
        fresh = timeline(cached, since, datetime.now(UTC) + timedelta(seconds=1))
        assert fresh["totals"]["error"] == 1
        # a late row in an old, cached minute: visible within the cache TTL
        add_audit(db, [AuditRow(old, severity="critical")])
        deadline = time.monotonic() + 10
        while True:
            body = timeline(cached, since, datetime.now(UTC) + timedelta(seconds=1))
            if body["totals"]["critical"] == 1:
                break
            assert time.monotonic() < deadline, "late row never appeared"
            time.sleep(0.2)
        assert body["totals"]["total"] == 12
    finally:
        cached.stop()


def test_whole_cached_hours_answer_like_single_minutes(api_env, db, tmp_path: Path) -> None:
    """Three hours at 1m: whole clock hours come back pre-joined from the cache; the answer
    equals the first (uncached) one and a late row in such an hour still shows up."""
    proc = ServiceProcess(
        "metrics_api", {**api_env, "BRIDGE_METRICS_BUCKET_CACHE_TTL": "2"}, tmp_path
    ).start()
    try:
        now = datetime.now(UTC)
        base = (now - timedelta(hours=3, minutes=-2)).replace(second=5, microsecond=0)
        add_audit(db, [AuditRow(base + timedelta(minutes=7 * i)) for i in range(20)])
        since = now - timedelta(hours=3, seconds=29)
        first = timeline(proc, since, now)
        second = timeline(proc, since, now)  # served from whole cached hours where possible
        assert second == first
        assert len(first["points"]) in (181, 182)
        seeded = {
            (base + timedelta(minutes=7 * i)).replace(second=0).isoformat().replace("+00:00", "Z")
            for i in range(20)
        }
        assert {p["t"] for p in first["points"] if p["total"]} >= seeded
        # a late row in a whole, cached hour: visible once its block expires (≤ TTL)
        late = (now - timedelta(hours=1, minutes=30)).replace(second=0, microsecond=0)
        before = first["totals"]["warning"]
        add_audit(db, [AuditRow(late, severity="warning")])
        deadline = time.monotonic() + 10
        while timeline(proc, since, now)["totals"]["warning"] != before + 1:
            assert time.monotonic() < deadline, "late row never appeared"
            time.sleep(0.2)
    finally:
        proc.stop()
