"""Which ranges of the continuous aggregate the worker refreshes after late rows (sans-I/O),
and the job-state figures it publishes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge_etl.jobs import JobState
from bridge_etl.refresh import BUCKET, LateRanges, bucket_start
from bridge_etl.stats import EtlStats
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

NOW = datetime(2026, 12, 1, 15, 30, 27, tzinfo=UTC)
M = timedelta(minutes=1)


def test_bucket_start_is_the_utc_minute() -> None:
    assert bucket_start(NOW) == datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    assert bucket_start(datetime(2026, 12, 1, 15, 30, tzinfo=UTC)) == datetime(
        2026, 12, 1, 15, 30, tzinfo=UTC
    )


def test_one_row_a_day_late_refreshes_its_minute_only() -> None:
    late = LateRanges()
    row = NOW - timedelta(days=1, hours=2, seconds=13)
    late.add_buckets([row])
    assert late.take(NOW) == [(bucket_start(row), bucket_start(row) + M)]
    assert not late and late.take(NOW) == []


def test_rows_days_apart_are_separate_ranges_and_near_ones_join() -> None:
    late = LateRanges(join_gap=timedelta(minutes=15))
    a = bucket_start(NOW - timedelta(days=10))
    b = bucket_start(NOW - timedelta(days=2))
    late.add_buckets([b, a, a + 5 * M, b + 20 * M])
    assert late.take(NOW) == [(a, a + 6 * M), (b, b + M), (b + 20 * M, b + 21 * M)]


def test_a_range_never_reaches_the_open_minute_or_the_one_before() -> None:
    late = LateRanges()
    late.add(bucket_start(NOW) - 10 * M, bucket_start(NOW) + M)
    late.add(bucket_start(NOW) - M, bucket_start(NOW))  # joined with the above
    [(lo, hi)] = late.take(NOW)
    assert lo == bucket_start(NOW) - 10 * M
    assert hi == bucket_start(NOW) - M  # the last closed minute is the policy's to do
    late.add(bucket_start(NOW), bucket_start(NOW) + M)  # nothing left to refresh
    assert late.take(NOW) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20_000), min_size=1, max_size=300))
def test_ranges_stay_bounded_and_cover_every_late_bucket(minutes: list[int]) -> None:
    late = LateRanges(max_ranges=8)
    base = bucket_start(NOW - timedelta(days=30))
    buckets = [base + m * M for m in minutes]
    late.add_buckets(buckets)
    ranges = late.take(NOW)
    assert 1 <= len(ranges) <= 8
    assert all(lo < hi and (hi - lo) % BUCKET == timedelta(0) for lo, hi in ranges)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    for b in buckets:
        assert any(lo <= b < hi for lo, hi in ranges)


def _job(job_id: int, proc: str, rel: str, status: str | None, failures: int) -> JobState:
    return JobState(
        job_id=job_id,
        proc_name=proc,
        relation=rel,
        last_run_status=status,
        job_status="Scheduled",
        total_runs=failures + 3,
        total_failures=failures,
        last_successful_finish=NOW - timedelta(minutes=20),
        next_start=NOW + timedelta(minutes=1),
    )


def test_job_state_reaches_metrics_and_heartbeat() -> None:
    reg = CollectorRegistry()
    stats = EtlStats(reg, mode="hybrid")
    assert "timescale_jobs_failing" not in stats.status()  # plain path: not reported
    stats.jobs(
        [
            _job(1000, "policy_refresh_continuous_aggregate", "audit_logs_1m", "Failed", 7),
            _job(1001, "policy_compression", "audit_logs_ts", "Success", 0),
            _job(1002, "policy_retention", "audit_logs_ts", None, 0),
        ],
        NOW,
    )
    st_ = stats.status()
    assert st_["timescale_jobs"] == 3 and st_["timescale_jobs_failing"] == 1
    assert st_["timescale_failing_jobs"] == [
        "policy_refresh_continuous_aggregate[1000] on audit_logs_1m"
    ]
    text = generate_latest(reg).decode()
    assert "bridge_etl_timescale_jobs_failing 1.0" in text
    assert (
        'bridge_etl_timescale_job_failing{job_id="1000",'
        'proc_name="policy_refresh_continuous_aggregate",relation="audit_logs_1m"} 1.0'
    ) in text
    assert (
        'bridge_etl_timescale_job_failures{job_id="1000",'
        'proc_name="policy_refresh_continuous_aggregate",relation="audit_logs_1m"} 7.0'
    ) in text
    assert 'bridge_etl_timescale_job_last_success_age_seconds{job_id="1001"' in text
    # the next read replaces the last: a job that recovered reads 0
    stats.jobs(
        [_job(1000, "policy_refresh_continuous_aggregate", "audit_logs_1m", "Success", 7)], NOW
    )
    assert stats.status()["timescale_jobs_failing"] == 0
    text = generate_latest(reg).decode()
    assert "bridge_etl_timescale_jobs_failing 0.0" in text and 'job_id="1001"' not in text
