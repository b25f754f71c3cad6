"""Every timeline and corrections answer equals a GROUP BY over the raw rows, whatever the
range, bucket and filters, and however late the rows arrive — on plain PostgreSQL, and on
TimescaleDB where `BRIDGE_TEST_TIMESCALE_DSN` points at a server that has it (an admin DSN:
the test creates and drops its own database there).

Rows go in through the ETL worker's own load statement (staging table → INSERT … ON
CONFLICT DO NOTHING → per-minute upsert, whose triggers move hours, days and totals; on
TimescaleDB the hypertable insert, then the worker's bottom-up refresh of the six
aggregates), in random order over 40 days — into hours and days long settled — and some
batches twice, as a replay after a crash would. The API runs with its caches off, so
every answer comes from the planner's rollup reads.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from bridge_etl import sink
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.etl_worker.audit import rollup_mismatches
from tests.metrics_api.seed import ensure_partitions
from tests.support import infra
from tests.support.ops import ops_get

SEV = ("debug", "info", "warning", "error", "critical")
ACTIONS = ("intent.created", "intent.corrected", "login")
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
NOW = datetime.now(UTC)
START = (NOW - timedelta(days=40)).replace(hour=0, minute=0, second=0, microsecond=0)
SPAN_S = int((NOW - START).total_seconds())
WIDTHS = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
#: longest range asked per bucket (inside MAX_POINTS and the rollup-bucket bound)
LONGEST = {"1m": 1440, "5m": 4000, "15m": 4800, "1h": 24 * 60 * 40, "1d": 24 * 60 * 40}
_ids = [0]


#: the continuous aggregates bottom-up with their bucket widths (Timescale path)
AGGREGATES = (
    ("audit_logs_1m", timedelta(minutes=1)),
    ("audit_logs_1h", timedelta(hours=1)),
    ("audit_logs_1d", timedelta(days=1)),
    ("audit_totals_1m", timedelta(minutes=1)),
    ("audit_totals_1h", timedelta(hours=1)),
    ("audit_totals_1d", timedelta(days=1)),
)


def _timescale_admin() -> str:
    admin = os.environ.get("BRIDGE_TEST_TIMESCALE_DSN", "")
    if not admin:
        pytest.skip("BRIDGE_TEST_TIMESCALE_DSN is not set (a PostgreSQL with TimescaleDB)")
    try:
        with psycopg.connect(admin, connect_timeout=3) as conn:
            have = conn.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
            ).fetchone()
    except psycopg.Error as exc:
        pytest.skip(f"BRIDGE_TEST_TIMESCALE_DSN does not answer: {str(exc).strip()}")
    if not have:
        pytest.skip("BRIDGE_TEST_TIMESCALE_DSN has no timescaledb extension")
    return admin


@pytest.fixture(scope="module", params=["plain", "timescale"])
def target(request: pytest.FixtureRequest, migrated_dsn: str) -> Iterator[tuple[str, str]]:
    """(path, DSN) of the target database: the module's own (plain), or a database created
    on the TimescaleDB server."""
    if request.param == "plain":
        yield "plain", migrated_dsn
        return
    from bridge_common import migrate

    admin = _timescale_admin()
    name = infra.unique_name("bt", "rollups_timescale")
    dsn = infra.create_database(admin, name)
    try:

        async def go() -> None:
            await migrate.apply(dsn, "source")
            await migrate.apply(dsn, "target")

        asyncio.run(go())
        yield "timescale", dsn
    finally:
        infra.drop_database(admin, name)


@pytest.fixture(scope="module")
def api_env(target: tuple[str, str], bridge_env: dict[str, str]) -> dict[str, str]:
    return {
        **bridge_env,
        "BRIDGE_SOURCE_DSN": target[1],
        "BRIDGE_TARGET_DSN": target[1],
        "BRIDGE_METRICS_CACHE_TTL": "0",
        "BRIDGE_METRICS_BUCKET_CACHE_TTL": "0",
    }


@pytest.fixture(scope="module")
def db(target: tuple[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(target[1], autocommit=True) as conn:
        yield conn


def _timescale(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return bool(row and row[0])


def load(conn: psycopg.Connection[Any], rows: list[tuple[datetime, str, str]]) -> int:
    """One ETL load transaction: rows (created_at, action, severity) with fresh ids."""
    batch = []
    for created_at, action, severity in rows:
        _ids[0] += 1
        batch.append((_ids[0], created_at, None, "prop", action, severity, Jsonb({})))
    return replay(conn, batch)


def replay(conn: psycopg.Connection[Any], batch: list[tuple[Any, ...]]) -> int:
    if not batch:
        return 0
    days = sorted(r[1].date() for r in batch)
    timescale = _timescale(conn)
    if not timescale:
        ensure_partitions(conn, days[0], days[-1])
    with conn.transaction():
        conn.execute(sink._STAGE_DDL)
        with conn.cursor() as cur:
            with cur.copy(sink._COPY) as copy:
                for row in batch:
                    copy.write_row(row)
            rec = cur.execute(sink._LOAD_TIMESCALE if timescale else sink._LOAD_PLAIN).fetchone()
    assert rec is not None
    if timescale and rec[1] is not None:
        # what the worker does for late rows (sink.flush_refresh): every level, bottom-up
        for name, width in AGGREGATES:
            lo = ORIGIN + (rec[2] - ORIGIN) // width * width
            hi = ORIGIN + ((rec[1] - ORIGIN) // width + 1) * width
            conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (name, lo, hi))
    return int(rec[0])


@pytest.fixture(scope="module")
def base(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """A few thousand rows spread over the 40 days, loaded in shuffled batches."""
    rnd = random.Random(20)  # noqa: S311 - test data
    rows = [
        (
            START + timedelta(seconds=rnd.randrange(SPAN_S)),
            rnd.choice(ACTIONS),
            rnd.choice(SEV),
        )
        for _ in range(3000)
    ]
    for i in range(0, len(rows), 500):
        load(db, rows[i : i + 500])
    return rows


def raw_counts(
    db: psycopg.Connection[Any],
    width: timedelta,
    a: datetime,
    b: datetime,
    action: str | None,
    severities: list[str] | None,
) -> dict[tuple[datetime, str], int]:
    rows = db.execute(
        "SELECT date_bin(%(w)s, created_at, %(o)s), severity, count(*) FROM audit_logs_ts"
        " WHERE created_at >= %(a)s AND created_at < %(b)s"
        " AND (%(action)s::text IS NULL OR action = %(action)s)"
        " AND (%(sev)s::text[] IS NULL OR severity = ANY(%(sev)s))"
        " GROUP BY 1, 2",
        {"w": width, "o": ORIGIN, "a": a, "b": b, "action": action, "sev": severities},
    ).fetchall()
    return {(t, s): int(n) for t, s, n in rows}


def ceil_minute(t: datetime) -> datetime:
    return ORIGIN - ((ORIGIN - t) // timedelta(minutes=1)) * timedelta(minutes=1)


late_rows = st.lists(
    st.tuples(
        st.integers(0, SPAN_S - 1).map(lambda s: START + timedelta(seconds=s, microseconds=7)),
        st.sampled_from(ACTIONS),
        st.sampled_from(SEV),
    ),
    max_size=25,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    late=late_rows,
    replay_it=st.booleans(),
    bucket=st.sampled_from(list(WIDTHS)),
    start_s=st.integers(0, SPAN_S - 60),
    length=st.floats(0.01, 1.0),
    action=st.one_of(st.none(), st.sampled_from(ACTIONS)),
    severities=st.one_of(st.none(), st.lists(st.sampled_from(SEV), min_size=1, unique=True)),
)
def test_timeline_equals_group_by_over_raw_rows(
    api, db, base, late, replay_it, bucket, start_s, length, action, severities
) -> None:
    inserted = load(db, late)
    assert inserted == len(late)
    if replay_it and late:
        # the same batch again (a replay after a crash): nothing is stored or counted twice
        again = db.execute(
            "SELECT source_id, created_at, intent_id, actor, action, severity, details"
            " FROM audit_logs_ts WHERE source_id > %s ORDER BY source_id",
            (_ids[0] - len(late),),
        ).fetchall()
        assert replay(db, [(*r[:6], Jsonb(r[6])) for r in again]) == 0
    width = WIDTHS[bucket]
    since = START + timedelta(seconds=start_s, microseconds=start_s % 7 * 100_000)
    until = min(NOW, since + timedelta(minutes=max(1.0, length * LONGEST[bucket])))
    params: dict[str, str] = {
        "bucket": bucket,
        "since": since.isoformat(),
        "until": until.isoformat(),
    }
    if action:
        params["action"] = action
    if severities:
        params["severity"] = ",".join(severities)
    resp = ops_get(api.url + "/api/v1/dashboard/timeline", params=params, timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    got = {
        (datetime.fromisoformat(p["t"]), s): p[s]
        for p in body["points"]
        for s in body["severities"]
        if p[s]
    }
    want = raw_counts(db, width, ceil_minute(since), ceil_minute(until), action, severities)
    assert got == want
    assert body["totals"]["total"] == sum(want.values())


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(late=late_rows, start_s=st.integers(0, SPAN_S - 60), hours=st.integers(1, 31 * 24))
def test_corrections_per_hour_equal_group_by_over_raw_rows(
    api, db, base, late, start_s, hours
) -> None:
    load(db, late)
    since = START + timedelta(seconds=start_s)
    until = min(NOW, since + timedelta(hours=hours))
    resp = ops_get(
        api.url + "/api/v1/dashboard/corrections",
        params={"since": since.isoformat(), "until": until.isoformat(), "limit": "1"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    got = {
        datetime.fromisoformat(p["t"]): p["count"] for p in resp.json()["per_hour"] if p["count"]
    }
    want: dict[datetime, int] = {}
    raw = raw_counts(
        db, timedelta(hours=1), ceil_minute(since), ceil_minute(until), "intent.corrected", None
    )
    for (t, _), n in raw.items():
        want[t] = want.get(t, 0) + n
    assert got == want


def test_rollup_levels_agree_with_the_raw_rows(db, base) -> None:
    """After everything above: each level equals a GROUP BY over the raw rows."""
    assert rollup_mismatches(db.info.dsn) == []


def test_grafana_json_api_requests_are_answered(api, db, base) -> None:
    """What docs/api.md tells Grafana's JSON API data source to send: `${__from:date:iso}`
    times (milliseconds, `Z`), a bucket variable; the fields it reads are there."""
    until = NOW.replace(second=0, microsecond=0)
    since = until - timedelta(days=30)

    def grafana(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"

    resp = ops_get(
        api.url + "/api/v1/dashboard/timeline",
        params={"bucket": "1d", "since": grafana(since), "until": grafana(until)},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    points = resp.json()["points"]
    assert len(points) == 31
    assert all(isinstance(p["total"], int) and p["t"].endswith("Z") for p in points)
    want = raw_counts(db, timedelta(days=1), since, until, None, None)
    assert sum(p["total"] for p in points) == sum(want.values())
    # a range the API will not answer explains itself in a JSON body Grafana shows
    too_long = ops_get(
        api.url + "/api/v1/dashboard/timeline",
        params={"bucket": "1m", "since": grafana(since), "until": grafana(until)},
        timeout=10,
    )
    assert too_long.status_code == 422 and "bucket" in too_long.json()["message"]
