"""Migration 0004 (per-hour and per-day rollups, all-actions totals) on both paths.

Plain: the triggers keep every level equal to a GROUP BY over the minutes through inserts,
upserts, updates and TRUNCATE, and the migration catches up with minutes counted before it.
TimescaleDB, checked without TimescaleDB as test_timescale_sql does: every statement
parses, the aggregates' queries run as plain materialized views over the 0001 objects, the
API calls run against stand-ins with TimescaleDB's signatures, and the relations and
columns equal the plain path's (the metrics API reads either without knowing which).
"""

from __future__ import annotations

import re
from importlib import resources

import pglast
import psycopg
from bridge_common.migrate import split_statements
from pglast import ast

from tests.etl_worker.test_timescale_sql import STUBS, _columns

RELATIONS = (
    "audit_logs_1h",
    "audit_logs_1d",
    "audit_totals_1m",
    "audit_totals_1h",
    "audit_totals_1d",
)


def _sql(version: str, variant: str) -> str:
    folder = resources.files("bridge_common") / "sql" / "target"
    [name] = [
        p.name
        for p in folder.iterdir()
        if p.name.startswith(version) and p.name.endswith(f".{variant}.sql")
    ]
    return (folder / name).read_text()


def _run_timescale_file(conn: psycopg.Connection, text: str) -> list[str]:
    kinds = []
    for stmt in split_statements(text):
        [raw] = pglast.parse_sql(stmt)
        node = raw.stmt
        kinds.append(type(node).__name__)
        if isinstance(node, ast.CreateExtensionStmt):
            continue
        if isinstance(node, ast.CreateTableAsStmt) and node.into.options:
            assert node.into.skipData
            conn.execute(re.sub(r"WITH\s*\(timescaledb\.[^)]*\)", "", stmt, count=1))
            continue
        if isinstance(node, ast.AlterTableStmt):
            continue  # compression settings: checked by test_timescale_sql
        conn.execute(stmt)
    return kinds


def test_timescale_variant_runs_against_the_api_and_matches_the_plain_relations(db_dsn) -> None:
    text = _sql("0004", "timescale")
    assert text.startswith("-- bridge:no-transaction")
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(STUBS)
        _run_timescale_file(conn, _sql("0001", "timescale"))
        kinds = _run_timescale_file(conn, text)
        assert kinds.count("CreateTableAsStmt") == 5
        assert kinds.count("CallStmt") == 6  # every level caught up at migration time
        ts_cols = {r: _columns(conn, r) for r in RELATIONS}
        conn.execute("CREATE SCHEMA plain")
        conn.execute("SET search_path = plain, public")
        conn.execute(_sql("0001", "plain"))
        conn.execute(_sql("0004", "plain"))
        for rel, cols in ts_cols.items():
            assert _columns(conn, f"plain.{rel}") == cols, rel


def _levels_agree(conn: psycopg.Connection) -> list[tuple]:
    """(relation, bucket) where a level differs from a GROUP BY over audit_logs_1m."""
    bad: list[tuple] = []
    for width, level in (("1 hour", "1h"), ("1 day", "1d")):
        bad += conn.execute(
            f"""
            WITH truth AS (
                SELECT date_bin('{width}', bucket, timestamptz '2000-01-01Z') AS bucket,
                       action, severity, sum(events) AS events
                FROM audit_logs_1m GROUP BY 1, 2, 3
            )
            SELECT 'audit_logs_{level}', coalesce(t.bucket, r.bucket) FROM truth t
            FULL JOIN audit_logs_{level} r USING (bucket, action, severity)
            WHERE t.events IS DISTINCT FROM r.events AND coalesce(r.events, 0) <> 0
            """  # noqa: S608 - constant names
        ).fetchall()
    for width, level in (("1 minute", "1m"), ("1 hour", "1h"), ("1 day", "1d")):
        bad += conn.execute(
            f"""
            WITH truth AS (
                SELECT date_bin('{width}', bucket, timestamptz '2000-01-01Z') AS bucket,
                       sum(events) FILTER (WHERE severity = 'info') AS info,
                       sum(events) FILTER (WHERE severity = 'error') AS error
                FROM audit_logs_1m GROUP BY 1
            )
            SELECT 'audit_totals_{level}', coalesce(t.bucket, r.bucket) FROM truth t
            FULL JOIN audit_totals_{level} r USING (bucket)
            WHERE (coalesce(t.info, 0), coalesce(t.error, 0))
                  IS DISTINCT FROM (r.info, r.error)
            """  # noqa: S608 - constant names
        ).fetchall()
    return bad


def test_plain_triggers_follow_every_change_to_the_minutes(db_dsn) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA triggers")  # the module's database is shared
        conn.execute("SET search_path = triggers, public")
        conn.execute(_sql("0001", "plain"))
        # minutes counted before the migration are caught up by it
        conn.execute(
            "INSERT INTO audit_logs_1m VALUES ('2026-11-30 10:05Z', 'a', 'info', 3),"
            " ('2026-11-30 23:59Z', 'b', 'error', 2)"
        )
        with conn.transaction():
            conn.execute(_sql("0004", "plain"))
        assert _levels_agree(conn) == []
        # the ETL's upsert: inserts and updates in one statement
        conn.execute(
            "INSERT INTO audit_logs_1m VALUES ('2026-11-30 10:05Z', 'a', 'info', 4),"
            " ('2026-12-01 00:00Z', 'a', 'info', 1), ('2026-11-30 10:06Z', 'b', 'error', 5)"
            " ON CONFLICT (bucket, action, severity)"
            " DO UPDATE SET events = audit_logs_1m.events + EXCLUDED.events"
        )
        assert conn.execute(
            "SELECT events FROM audit_logs_1h WHERE bucket = '2026-11-30 10:00Z' AND action = 'a'"
        ).fetchone() == (7,)
        # a correction by hand moves the levels by the difference
        conn.execute("UPDATE audit_logs_1m SET events = events - 1 WHERE action = 'b'")
        assert _levels_agree(conn) == []
        assert conn.execute(
            "SELECT error FROM audit_totals_1d WHERE bucket = '2026-11-30Z'"
        ).fetchone() == (5,)
        # a rolled-back load leaves nothing behind
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO audit_logs_1m VALUES ('2026-11-29 01:00Z', 'c', 'info', 9)"
                )
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        assert _levels_agree(conn) == []
        # retention deletes levels one by one: a DELETE of minutes keeps hours and days
        conn.execute("DELETE FROM audit_logs_1m WHERE bucket < '2026-12-01Z'")
        assert conn.execute("SELECT sum(events)::int FROM audit_logs_1d").fetchone() == (13,)
        conn.execute("TRUNCATE audit_logs_1m")
        for rel in RELATIONS:
            assert conn.execute(f"SELECT count(*) FROM {rel}").fetchone() == (0,), rel  # noqa: S608
