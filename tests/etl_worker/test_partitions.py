"""Plain-PostgreSQL path: partitions ahead and on demand, retention drop, backfill."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.etl_worker.audit import (
    dead_letters,
    insert_rows,
    rollup_mismatches,
    source_sum,
    target_sum,
)


@pytest.fixture(scope="module")
def storage() -> str:
    """Daily partitions are the plain path's own (TimescaleDB has chunks and policies:
    test_timescale_pglite.py and the suites on `BRIDGE_TEST_TIMESCALE_DSN`)."""
    return "plain"


def _partitions(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_logs_ts'::regclass"
        ).fetchall()
    return {r[0] for r in rows}


def _day(delta: int) -> str:
    return f"audit_logs_ts_p{datetime.now(UTC).date() + timedelta(days=delta):%Y%m%d}"


def _event(logs: str, name: str) -> dict:
    [found] = [e for e in map(json.loads, logs.splitlines()) if e.get("event") == name]
    return found


def run_once(spawn, env, *args: str) -> str:
    proc = spawn("etl", env, args=list(args), wait_ready=False)
    assert proc.proc.wait(60) == 0, proc.logs()[-3000:]
    return proc.logs()


def test_partitions_ahead_on_demand_and_retention(spawn, etl_env, clean) -> None:
    old = datetime.now(UTC) - timedelta(days=10)
    with psycopg.connect(clean, autocommit=True) as conn:
        lo = old.replace(hour=0, minute=0, second=0, microsecond=0)
        conn.execute(
            f"CREATE TABLE {_day(-10)} PARTITION OF audit_logs_ts"
            " FOR VALUES FROM (%s) TO (%s)".replace("%s", "'{}'").format(lo, lo + timedelta(1))
        )
        conn.execute(
            "INSERT INTO audit_logs_ts (source_id, created_at, actor, action, severity)"
            " VALUES (999999, %s, 'old', 'old', 'info')",
            (old,),
        )
        conn.execute(
            "INSERT INTO audit_logs_1m VALUES (date_trunc('minute', now()) - interval '30 days',"
            " 'ancient', 'info', 7)"
        )
    insert_rows(clean, 300, hours=2, offset_hours=72)  # about 3 days ago: on demand
    insert_rows(clean, 50, hours=2, offset_hours=20 * 24, start=300)  # past the retention
    env = {
        **etl_env,
        "BRIDGE_ETL_RETENTION_DAYS": "5",
        "BRIDGE_ETL_PARTITIONS_AHEAD": "2",
        "BRIDGE_ETL_ROLLUP_RETENTION_DAYS": "20",
    }
    logs = run_once(spawn, env, "--mode", "polling", "--once")
    parts = _partitions(clean)
    assert _day(-10) not in parts  # expired partition dropped, with its row
    assert {_day(0), _day(1), _day(2)} <= parts  # ahead
    assert _day(3) not in parts
    assert any(p in parts for p in (_day(-3), _day(-4)))  # on demand for the batch's days
    assert '"event": "partition.dropped"' in logs
    # only the rows inside the retention were loaded; the expired ones were counted
    assert target_sum(clean) == source_sum(clean, "WHERE created_at > now() - interval '5 days'")
    assert target_sum(clean)[0] == 300
    with psycopg.connect(clean) as conn:
        for rollup in ("audit_logs_1m", "audit_logs_1h", "audit_logs_1d"):
            ancient = conn.execute(
                f"SELECT count(*) FROM {rollup} WHERE action = 'ancient'"  # noqa: S608
            )
            assert ancient.fetchone() == (0,), rollup
    assert rollup_mismatches(clean) == []


def test_backfill_since_loads_that_range_once(spawn, etl_env, clean, redis_url, namespace) -> None:
    insert_rows(clean, 400, hours=24, offset_hours=24 * 6)  # 6-7 days ago
    insert_rows(clean, 600, hours=30, start=400)  # the last 30 hours
    with psycopg.connect(clean, autocommit=True) as conn:  # need the row path
        conn.execute(
            "INSERT INTO audit_logs (actor, action, details) VALUES"
            " ('legacy', 'x', to_jsonb('{\"a\": 1}'::text)), ('bad', 'x', '[1]')"
        )
    since = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    logs = run_once(spawn, etl_env, "backfill", "--since", since, "--batch-size", "128")
    assert '"event": "backfill.done"' in logs and '"same_database": true' in logs
    # what was stored: the 600 recent rows and the legacy one; not the dead letter
    assert _event(logs, "backfill.done")["rows"] == 601
    [letter] = dead_letters(redis_url, namespace)
    assert letter["source_id"] == "1002" and "JSON object" in letter["reason"]
    with psycopg.connect(clean) as conn:
        legacy = conn.execute("SELECT details FROM audit_logs_ts WHERE actor = 'legacy'")
        assert legacy.fetchone() == ({"a": 1},)
    plain = "AND actor NOT IN ('bad', 'legacy')"
    want = source_sum(clean, f"WHERE created_at >= '{since}' {plain}")
    assert target_sum(clean, "WHERE actor <> 'legacy'") == want and want[0] == 600
    logs = run_once(spawn, etl_env, "backfill", "--since", since)  # again: nothing new
    assert target_sum(clean, "WHERE actor <> 'legacy'") == want
    assert _event(logs, "backfill.done")["rows"] == 0
    assert rollup_mismatches(clean) == []
    # the older range, bounded: fills the rest, partitions created for those days
    until = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    older = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    # a separate target database takes the path through the worker (COPY + INSERT … SELECT)
    other_target = {**etl_env, "BRIDGE_TARGET_DSN": clean + "?application_name=etl-target"}
    logs = run_once(spawn, other_target, "backfill", "--since", older, "--until", until)
    assert '"same_database": false' in logs
    assert target_sum(clean, "WHERE actor <> 'legacy'") == source_sum(clean, f"WHERE true {plain}")
    assert _day(-6) in _partitions(clean)
    assert rollup_mismatches(clean) == []
