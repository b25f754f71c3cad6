"""The planner in-process (no database): its slots tile the range's whole minutes without
gap or overlap, each on its own level's boundaries, each level nesting in the answer's
buckets, and the coarsest level that fits is the one used."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge_metrics_api import planner
from bridge_metrics_api.params import BUCKETS
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = datetime(2026, 3, 29, tzinfo=UTC)
times = st.integers(0, 200 * 24 * 3600 * 1000).map(lambda ms: T0 + timedelta(milliseconds=ms))


@settings(max_examples=300)
@given(
    since=times,
    length_ms=st.integers(1, 120 * 24 * 3600 * 1000),
    bucket=st.sampled_from([*BUCKETS, None]),
)
def test_slots_tile_the_minutes_on_their_own_boundaries(since, length_ms, bucket) -> None:
    until = since + timedelta(milliseconds=length_ms)
    width = BUCKETS[bucket] if bucket else None
    plan = planner.plan(since, until, width)
    a, b = planner.minute_range(since, until)
    cursor = a
    for (lo, hi), (_, _, level) in zip(plan.slots(), planner.SLOTS, strict=True):
        assert lo <= hi
        if lo == hi:
            continue
        assert lo == cursor, "slots are contiguous, in order"
        assert (lo - planner.ORIGIN) % level == timedelta(0)
        assert (hi - planner.ORIGIN) % level == timedelta(0)
        if width is not None:
            assert width % level == timedelta(0), "a rollup bucket nests in one answer bucket"
        cursor = hi
    assert cursor == b
    # the coarsest level that fits: no whole UTC hour read as minutes, nor a whole UTC day
    # as hours (where that level may be used)
    m1, h1, d, h2, m2 = plan.slots()
    if width is None or width >= planner.HOUR:
        for lo, hi in (m1, m2):
            assert planner.ceil_to(lo, planner.HOUR) + planner.HOUR > hi or lo == hi
    if width is None or width >= planner.DAY:
        for lo, hi in (h1, h2):
            assert planner.ceil_to(lo, planner.DAY) + planner.DAY > hi or lo == hi


def test_a_minute_counts_when_it_starts_in_the_range() -> None:
    since = datetime(2026, 3, 29, 10, 0, 30, tzinfo=UTC)
    until = datetime(2026, 3, 29, 10, 2, 0, 1, tzinfo=UTC)
    assert planner.minute_range(since, until) == (
        datetime(2026, 3, 29, 10, 1, tzinfo=UTC),
        datetime(2026, 3, 29, 10, 3, tzinfo=UTC),
    )


def test_ninety_days_by_day_reads_few_buckets() -> None:
    until = datetime(2026, 12, 1, 15, 47, 12, tzinfo=UTC)
    plan = planner.plan(until - timedelta(days=90), until, timedelta(days=1))
    # 89 days, 8 + 15 hours, 12 + 48 minutes (until 15:47:12 counts the minute 15:47)
    assert plan.buckets == 89 + 8 + 15 + 12 + 48
    assert planner.plan(until - timedelta(days=90), until, timedelta(minutes=15)).buckets > (
        planner.MAX_ROLLUP_BUCKETS
    )
