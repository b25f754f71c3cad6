"""The Timescale path on the real TimescaleDB extension, without a TimescaleDB server:
PGlite with TimescaleDB 2.23 (PostgreSQL 17, WASM) behind a wire-protocol socket
(tests/support/timescale.py). It takes one connection at a time and runs no background
jobs, so these tests drive the worker's own code — `bridge-migrate`, the sink, the refresh
of late buckets, retention sync, job state — over a single connection; the services
themselves run on the Timescale path where `BRIDGE_TEST_TIMESCALE_DSN` names a server.

One PGlite (one database) serves the module; each test starts from a newly migrated
target.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from bridge_common.db import open_pool
from bridge_etl import sink as sink_module
from bridge_etl.deadletter import DeadLetters
from bridge_etl.jobs import read_jobs
from bridge_etl.partitions import Partitions
from bridge_etl.refresh import BUCKET, bucket_start
from bridge_etl.sink import Sink
from bridge_etl.stats import EtlStats
from bridge_etl.target import ROLLUP_RELATIONS, detect_path, sync_timescale_retention
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from tests.support import timescale
from tests.support.timescale import PGliteServer

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server() -> Iterator[PGliteServer]:
    why = timescale.pglite_missing()
    if why:
        pytest.skip(why)
    with timescale.pglite() as srv:
        yield srv


def _cli(dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge_common", *args],
        env={"PATH": "/usr/bin:/bin", "BRIDGE_SOURCE_DSN": dsn, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class FirstMigration:
    """`bridge-migrate` on a server with TimescaleDB installed, run the way an operator
    would: first before the extension exists, then after `CREATE EXTENSION`."""

    refused: subprocess.CompletedProcess[str]  # BRIDGE_TARGET_STORAGE=timescale, not created
    done: subprocess.CompletedProcess[str]  # auto, once created
    check: subprocess.CompletedProcess[str]  # --check afterwards
    other: subprocess.CompletedProcess[str]  # BRIDGE_TARGET_STORAGE=plain afterwards


@pytest.fixture(scope="module")
def first(server: PGliteServer) -> FirstMigration:
    dsn = server.dsn
    # PGlite lists nothing in shared_preload_libraries and the extension is not created
    # yet, so this runs before anything creates it (once per server)
    refused = _cli(dsn, BRIDGE_TARGET_STORAGE="timescale")
    _drop_schema(dsn)  # what the refused run applied on the source side
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    done = _cli(dsn)
    return FirstMigration(
        refused, done, _cli(dsn, "--check"), _cli(dsn, BRIDGE_TARGET_STORAGE="plain")
    )


def _drop_schema(dsn: str) -> None:
    """Everything `bridge-migrate` created, not the extension (PGlite is one backend: a
    dropped timescaledb cannot be created again in it)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP MATERIALIZED VIEW IF EXISTS audit_logs_1m CASCADE")
        conn.execute("DROP TABLE IF EXISTS audit_logs_ts CASCADE")  # a hypertable goes alone
        conn.execute("DROP TABLE IF EXISTS audit_logs, intents CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS bridge CASCADE")


@pytest.fixture
def migrated(first: FirstMigration, server: PGliteServer) -> str:
    """A newly migrated target for each test: PGlite has one database, and the tests run
    in any order."""
    assert first.done.returncode == 0, first.done.stderr
    _drop_schema(server.dsn)
    again = _cli(server.dsn)
    assert again.returncode == 0, again.stderr
    return server.dsn


def test_storage_choice_on_a_server_with_timescaledb_installed(first: FirstMigration) -> None:
    # installed, not preloaded, not created: `timescale` is refused with one line
    assert first.refused.returncode == 1, first.refused.stdout
    assert "add it to shared_preload_libraries" in first.refused.stderr
    assert len(first.refused.stderr.strip().splitlines()) == 1
    # created: auto takes TimescaleDB
    assert first.done.returncode == 0, first.done.stderr
    assert "applied target 0001_audit_logs_ts (timescale)" in first.done.stdout
    assert first.check.returncode == 0
    # the target keeps its storage
    assert first.other.returncode == 1
    assert "migrated for timescale storage" in first.other.stderr


def test_migration_builds_the_timescale_objects(migrated: str) -> None:
    with psycopg.connect(migrated, autocommit=True) as conn:
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
        assert version is not None and version[0].split(".")[0] == str(timescale.TIMESCALE_MAJOR)
        pg = conn.execute("SHOW server_version_num").fetchone()
        assert pg is not None and int(pg[0]) // 10000 == timescale.PG_MAJOR
        ht = conn.execute(
            "SELECT compression_enabled FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'audit_logs_ts'"
        ).fetchone()
        assert ht == (True,)
        cagg = conn.execute(
            "SELECT materialized_only FROM timescaledb_information.continuous_aggregates"
            " WHERE view_name = 'audit_logs_1m'"
        ).fetchone()
        assert cagg == (False,)  # real-time
        seg = conn.execute(
            "SELECT attname FROM timescaledb_information.compression_settings"
            " WHERE hypertable_name = 'audit_logs_ts' AND segmentby_column_index = 1"
        ).fetchone()
        assert seg == ("action",)
        rows = conn.execute(
            "SELECT coalesce(ca.view_name, j.hypertable_name)::text, j.proc_name::text,"
            " j.config ->> 'drop_after', j.config ->> 'compress_after',"
            " j.config ->> 'start_offset', j.config ->> 'end_offset'"
            " FROM timescaledb_information.jobs j LEFT JOIN"
            " timescaledb_information.continuous_aggregates ca"
            " ON ca.materialization_hypertable_name = j.hypertable_name"
            " WHERE j.job_id >= 1000"
        ).fetchall()
        jobs = [r[:4] for r in rows]
        assert ("audit_logs_ts", "policy_compression", None, "7 days") in jobs
        assert ("audit_logs_ts", "policy_retention", "90 days", None) in jobs
        refresh = [
            r[4:] for r in rows if r[:2] == ("audit_logs_1m", "policy_refresh_continuous_aggregate")
        ]
        assert refresh == [("2 days", "00:01:00")]
        # every rollup level (0004: hours and days built on the level below, and the
        # all-actions totals) is a continuous aggregate with a refresh and a retention policy
        for level in ROLLUP_RELATIONS:
            assert (level, "policy_refresh_continuous_aggregate", None, None) in jobs
            assert (level, "policy_retention", "400 days", None) in jobs


@pytest.fixture
async def pool(migrated: str) -> AsyncIterator[AsyncConnectionPool]:
    async with open_pool(migrated, min_size=1, max_size=1, name="pglite", wait=True) as p:
        yield p


def _sink(pool: AsyncConnectionPool) -> Sink:
    stats = EtlStats(CollectorRegistry(), mode="polling")
    stats.path = "timescale"
    parts = Partitions(pool, retention_days=90, rollup_retention_days=400, ahead=1)
    letters = DeadLetters(None, "unused", "test", 100)  # type: ignore[arg-type]  # no rejects
    return Sink(pool, "timescale", letters, stats, parts)


async def _source(pool: AsyncConnectionPool, *rows: tuple[datetime, str, str]) -> int:
    """Insert source audit rows (created_at, action, severity); returns the last id."""
    async with pool.connection() as conn:
        last = 0
        for at, action, severity in rows:
            cur = await conn.execute(
                "INSERT INTO audit_logs (actor, action, severity, created_at)"
                " VALUES ('tester', %s, %s, %s) RETURNING id",
                (action, severity, at),
            )
            got = await cur.fetchone()
            assert got is not None
            last = int(got[0])
        await conn.commit()
        return last


async def _load(sink: Sink, lo: int, hi: int) -> tuple[int, int]:
    """The worker's same-database load of source ids `lo < id <= hi` (backfill's path;
    PGlite's socket has no COPY, which the other paths stage their rows with)."""
    since = datetime.now(UTC) - timedelta(days=60)
    result = await sink.load_source_range(lo, hi, since=since, until=None, origin="backfill")
    return result.inserted, hi - lo - result.inserted


async def _q(pool: AsyncConnectionPool, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cur = await conn.execute(sql, params or None)
        rows = await cur.fetchall()
        await conn.commit()
        return rows


async def _materialized(pool: AsyncConnectionPool) -> dict[datetime, int]:
    """Events per bucket as materialised (what the aggregate holds without real-time)."""
    [(schema, table)] = await _q(
        pool,
        "SELECT materialization_hypertable_schema, materialization_hypertable_name"
        " FROM timescaledb_information.continuous_aggregates WHERE view_name = 'audit_logs_1m'",
    )
    rows = await _q(
        pool,
        f'SELECT bucket, sum(events)::int FROM "{schema}"."{table}" GROUP BY 1',  # noqa: S608
    )
    return {b: n for b, n in rows}


async def _mismatches(pool: AsyncConnectionPool) -> list[tuple[Any, ...]]:
    """Buckets where the real-time aggregate differs from a GROUP BY over the raw rows."""
    return await _q(
        pool,
        """
        WITH truth AS (
            SELECT time_bucket(INTERVAL '1 minute', created_at) AS bucket, action, severity,
                   count(*) AS events
            FROM audit_logs_ts GROUP BY 1, 2, 3
        )
        SELECT coalesce(t.bucket, r.bucket), t.events, r.events
        FROM truth t FULL JOIN audit_logs_1m r USING (bucket, action, severity)
        WHERE t.events IS DISTINCT FROM r.events
        """,
    )


async def test_loads_exactly_once_and_refreshes_only_the_late_buckets(pool) -> None:
    sink = _sink(pool)
    async with pool.connection() as conn:
        assert await detect_path(conn) == "timescale"
        await conn.commit()
    now = datetime.now(UTC)
    late_3d = bucket_start(now - timedelta(days=3)) + timedelta(seconds=7)
    late_10d = bucket_start(now - timedelta(days=10)) + timedelta(seconds=11)
    recent = [(now - timedelta(minutes=i), "login", "info") for i in range(1, 31)]
    late = [(late_3d, "login", "info"), (late_3d, "logout", "error"), (late_10d, "x", "info")]
    hi = await _source(pool, *recent, *late)
    assert await _load(sink, 0, hi) == (33, 0)
    assert await _load(sink, 0, hi) == (0, 33)  # a replay stores nothing
    assert (await _q(pool, "SELECT count(*) FROM audit_logs_ts")) == [(33,)]
    # real-time aggregation shows every row before anything is materialised
    assert await _materialized(pool) == {}
    assert await _mismatches(pool) == []

    await sink.flush_refresh()
    # exactly the two late minutes were materialised: not the days between them, not the
    # recent rows (the policy's), and never the open minute
    assert await _materialized(pool) == {bucket_start(late_10d): 1, bucket_start(late_3d): 2}
    assert await _mismatches(pool) == []
    # a row written into the open minute afterwards shows at once (it is not materialised)
    nxt = await _source(pool, (datetime.now(UTC), "login", "info"))
    assert await _load(sink, hi, nxt) == (1, 0)
    assert await _mismatches(pool) == []
    # nothing is left to refresh; another row a day late refreshes one more minute
    await sink.flush_refresh()
    assert len(await _materialized(pool)) == 2
    day_late = now - timedelta(days=1, minutes=5)
    last = await _source(pool, (day_late, "login", "info"))
    assert await _load(sink, nxt, last) == (1, 0)
    await sink.flush_refresh()
    assert (await _materialized(pool))[bucket_start(day_late)] == 1
    assert len(await _materialized(pool)) == 3
    assert await _mismatches(pool) == []


async def test_the_staged_load_names_the_late_buckets(pool) -> None:
    """The statement the COPY-fed paths run (rows staged by INSERT here)."""
    old = datetime.now(UTC) - timedelta(days=4)
    async with pool.connection() as conn:
        await conn.execute(sink_module._STAGE_DDL)
        await conn.execute(
            "INSERT INTO etl_stage VALUES (900001, %s, NULL, 'a', 'x', 'info', '{}'),"
            " (900002, now(), NULL, 'a', 'x', 'info', '{}')",
            (old,),
        )
        cur = await conn.execute(sink_module._LOAD_TIMESCALE, {"late_after": 86400.0})
        rec = await cur.fetchone()
        await conn.rollback()
    assert rec is not None and rec[0] == 2 and rec[4] == [bucket_start(old)]


async def test_on_conflict_into_a_compressed_chunk(pool) -> None:
    sink = _sink(pool)
    old = datetime.now(UTC) - timedelta(days=20)
    first = await _source(pool, (old, "x", "info"), (old + BUCKET, "x", "info"))
    assert await _load(sink, first - 2, first) == (2, 0)
    compressed = await _q(
        pool,
        "SELECT count(compress_chunk(c, if_not_compressed => true))"
        " FROM show_chunks('audit_logs_ts', older_than => INTERVAL '7 days') c",
    )
    assert compressed[0][0] >= 1
    in_compressed = await _q(
        pool,
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name ="
        " 'audit_logs_ts' AND is_compressed AND range_start <= %s AND range_end > %s",
        old,
        old,
    )
    assert in_compressed == [(1,)]
    # a replay of the compressed rows together with a new row for the same chunk
    last = await _source(pool, (old + 2 * BUCKET, "x", "info"))
    assert await _load(sink, first - 2, last) == (1, 2)
    rows = await _q(
        pool,
        "SELECT count(*) FROM audit_logs_ts WHERE created_at BETWEEN %s AND %s",
        old,
        old + 3 * BUCKET,
    )
    assert rows == [(3,)]
    await sink.flush_refresh()
    assert await _mismatches(pool) == []


async def test_retention_settings_reach_both_policies(pool) -> None:
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        assert await sync_timescale_retention(conn, 90, "audit_logs_ts") is False
        assert await sync_timescale_retention(conn, 30, "audit_logs_ts") is True
        assert await sync_timescale_retention(conn, 400, "audit_logs_1m") is False
        assert await sync_timescale_retention(conn, 365, "audit_logs_1m") is True
        assert await sync_timescale_retention(conn, 365, "audit_logs_1m") is False
        await conn.set_autocommit(False)
    policies = await _q(
        pool,
        "SELECT coalesce(ca.view_name, j.hypertable_name)::text, j.config ->> 'drop_after'"
        " FROM timescaledb_information.jobs j LEFT JOIN"
        " timescaledb_information.continuous_aggregates ca"
        " ON ca.materialization_hypertable_name = j.hypertable_name"
        " WHERE j.proc_name = 'policy_retention' ORDER BY 1",
    )
    others = [(r, "400 days") for r in ROLLUP_RELATIONS if r != "audit_logs_1m"]
    assert policies == sorted(
        [("audit_logs_1m", "365 days"), ("audit_logs_ts", "30 days")] + others
    )


async def test_job_state_is_read_from_job_stats(pool) -> None:
    async with pool.connection() as conn:
        jobs = await read_jobs(conn)
        await conn.commit()
    assert {j.proc_name for j in jobs} == {
        "policy_refresh_continuous_aggregate",
        "policy_compression",
        "policy_retention",
    }
    by_proc = {(j.proc_name, j.relation): j for j in jobs}
    assert {r for p, r in by_proc if p == "policy_refresh_continuous_aggregate"} == set(
        ROLLUP_RELATIONS
    )
    assert {r for p, r in by_proc if p == "policy_compression"} == {"audit_logs_ts"}
    # PGlite runs no background jobs: nothing ran, nothing failed
    assert not any(j.failing for j in jobs) and all(j.total_runs == 0 for j in jobs)
    # what the scheduler records after a run that failed (as with the portal error on
    # 2.28.3 / PostgreSQL 15.20): the catalog row job_stats reads, never-succeeded
    refresh = by_proc[("policy_refresh_continuous_aggregate", "audit_logs_1m")]
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO _timescaledb_internal.bgw_job_stat (job_id, last_start, last_finish,"
            " next_start, last_successful_finish, last_run_success, total_runs,"
            " total_duration, total_duration_failures, total_successes, total_failures,"
            " total_crashes, consecutive_failures, consecutive_crashes, flags)"
            " VALUES (%s, now() - interval '1 minute', now(), now() + interval '5 minutes',"
            " '-infinity', false, 4, '1 second', '1 second', 0, 4, 0, 4, 0, 0)",
            (refresh.job_id,),
        )
        await conn.commit()
        jobs = await read_jobs(conn)
        await conn.rollback()
    [failing] = [j for j in jobs if j.failing]
    assert failing.job_id == refresh.job_id and failing.total_failures == 4
    assert failing.last_successful_finish is None  # -infinity: never succeeded
    stats = EtlStats(CollectorRegistry(), mode="polling")
    stats.jobs(jobs, datetime.now(UTC))
    assert stats.status()["timescale_jobs_failing"] == 1


def test_the_suites_timescale_fixtures_work_on_the_extension(migrated: str) -> None:
    """What the ETL and metrics-API suites do on the Timescale path besides the services:
    seed audit rows (tests/metrics_api/seed.py), compare the aggregate with the raw rows
    (tests/etl_worker/audit.py), and empty the target between tests (conftest `clean`)."""
    from tests.etl_worker.audit import rollup_mismatches
    from tests.metrics_api.seed import AuditRow, add_audit, is_timescale

    now = datetime.now(UTC)
    with psycopg.connect(migrated, autocommit=True) as conn:
        assert is_timescale(conn)
        conn.execute("TRUNCATE audit_logs_ts")
        conn.execute("CALL refresh_continuous_aggregate('audit_logs_1m', NULL, NULL)")
        # the aggregate is materialised up to now, as after a policy run
        conn.execute(
            "CALL refresh_continuous_aggregate('audit_logs_1m', NULL, %s)",
            (bucket_start(now) - BUCKET,),
        )
        rows = [AuditRow(now - timedelta(minutes=m), severity="error") for m in (2, 3, 3, 90)]
        rows.append(AuditRow(now - timedelta(days=5), action="intent.corrected"))
        assert len(add_audit(conn, rows)) == 5
        counts = conn.execute(
            "SELECT action, severity, sum(events)::int FROM audit_logs_1m GROUP BY 1, 2"
            " ORDER BY 1, 2"
        ).fetchall()
    # seeded rows behind the watermark show at once
    assert counts == [("intent.corrected", "info", 1), ("intent.created", "error", 4)]
    assert rollup_mismatches(migrated) == []
