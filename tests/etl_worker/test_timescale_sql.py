"""The TimescaleDB migration, checked without TimescaleDB: every statement parses with
PostgreSQL's own parser (pglast), and runs on real PostgreSQL against stand-ins that have
the exact signatures of the TimescaleDB API it calls (names, argument names and types, as
in timescaledb's sql/ddl_api.sql and sql/policy_api.sql). Where the extension exists, the
migration and the worker run for real."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from importlib import resources

import pglast
import psycopg
import pytest
from bridge_common.migrate import split_statements
from bridge_etl import sink
from bridge_etl.refresh import LATE_AFTER, bucket_start
from bridge_etl.target import sync_timescale_retention
from pglast import ast

from tests.support import infra, timescale


@pytest.fixture(scope="module")
def storage() -> str:
    """Stand-ins on plain PostgreSQL (the real extension: test_timescale_pglite.py)."""
    return "plain"


# Stand-ins with TimescaleDB's signatures. SQL functions cannot take "any", so the "any"
# parameters are polymorphic here; they accept the same intervals the real ones do.
STUBS = """
CREATE FUNCTION create_hypertable(
    relation REGCLASS, time_column_name NAME, partitioning_column NAME = NULL,
    number_partitions INTEGER = NULL, associated_schema_name NAME = NULL,
    associated_table_prefix NAME = NULL, chunk_time_interval ANYELEMENT = NULL::bigint,
    create_default_indexes BOOLEAN = TRUE, if_not_exists BOOLEAN = FALSE,
    partitioning_func REGPROC = NULL, migrate_data BOOLEAN = FALSE,
    chunk_target_size TEXT = NULL, chunk_sizing_func REGPROC = NULL,
    time_partitioning_func REGPROC = NULL
) RETURNS TABLE(hypertable_id INT, schema_name NAME, table_name NAME, created BOOL)
LANGUAGE sql AS $$ SELECT 1, 'public'::name, relation::text::name, true $$;

CREATE FUNCTION time_bucket(bucket_width INTERVAL, ts TIMESTAMPTZ) RETURNS TIMESTAMPTZ
LANGUAGE sql IMMUTABLE AS $$ SELECT date_bin(bucket_width, ts, '2000-01-03 00:00:00+00') $$;

CREATE FUNCTION add_continuous_aggregate_policy(
    continuous_aggregate REGCLASS, start_offset ANYCOMPATIBLE, end_offset ANYCOMPATIBLE,
    schedule_interval INTERVAL, if_not_exists BOOL = false
) RETURNS INTEGER LANGUAGE sql AS $$ SELECT 1 $$;

CREATE FUNCTION add_compression_policy(
    hypertable REGCLASS, compress_after ANYELEMENT, if_not_exists BOOL = false
) RETURNS INTEGER LANGUAGE sql AS $$ SELECT 1 $$;

CREATE FUNCTION add_retention_policy(
    relation REGCLASS, drop_after ANYELEMENT, if_not_exists BOOL = false
) RETURNS INTEGER LANGUAGE sql AS $$ SELECT 1 $$;

CREATE FUNCTION remove_retention_policy(relation REGCLASS, if_exists BOOL = false)
RETURNS VOID LANGUAGE sql AS $$ SELECT $$;

CREATE PROCEDURE refresh_continuous_aggregate(
    continuous_aggregate REGCLASS, window_start ANYCOMPATIBLE, window_end ANYCOMPATIBLE
) LANGUAGE sql AS $$ SELECT 1 $$;
"""
LATE = {"late_after": LATE_AFTER.total_seconds()}
CAGG_OPTIONS = {"continuous", "materialized_only"}
COMPRESS_OPTIONS = {"compress", "compress_segmentby", "compress_orderby"}


def _sql(variant: str) -> str:
    folder = resources.files("bridge_common") / "sql" / "target"
    return (folder / f"0001_audit_logs_ts.{variant}.sql").read_text()


def _columns(conn: psycopg.Connection, rel: str) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (rel,),
    ).fetchall()


def test_timescale_migration_parses_and_runs_against_the_timescale_api(db_dsn) -> None:
    text = _sql("timescale")
    assert text.startswith("-- bridge:no-transaction")  # continuous aggregates need it
    statements = split_statements(text)
    assert len(statements) >= 10
    kinds = []
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(STUBS)
        for stmt in statements:
            [raw] = pglast.parse_sql(stmt)
            node = raw.stmt
            kinds.append(type(node).__name__)
            if isinstance(node, ast.CreateExtensionStmt):
                assert node.extname == "timescaledb"
                continue
            if isinstance(node, ast.CreateTableAsStmt) and node.into.options:
                opts = {(o.defnamespace, o.defname) for o in node.into.options}
                assert opts == {("timescaledb", n) for n in CAGG_OPTIONS}, opts
                assert node.into.skipData  # WITH NO DATA: the policy fills it
                # run it as a plain materialized view: checks its query and columns
                conn.execute(re.sub(r"WITH\s*\(timescaledb\.[^)]*\)", "", stmt, count=1))
                continue
            if isinstance(node, ast.AlterTableStmt):
                [cmd] = node.cmds
                opts = {o.defname: o for o in cmd.def_}
                assert {o.defnamespace for o in cmd.def_} == {"timescaledb"}
                assert set(opts) <= COMPRESS_OPTIONS and "compress" in opts
                cols = {c for c, _ in _columns(conn, node.relation.relname)}
                for key in ("compress_segmentby", "compress_orderby"):
                    for part in opts[key].arg.sval.split(","):
                        assert part.split()[0] in cols, (key, part)
                continue
            conn.execute(stmt)  # tables, indexes, and the API calls against the stand-ins
        assert kinds.count("SelectStmt") == 5  # the five TimescaleDB API calls
        # the metrics API reads the same relations and columns on either path
        ts_cols = {r: _columns(conn, r) for r in ("audit_logs_ts", "audit_logs_1m")}
        conn.execute("CREATE SCHEMA plain")
        conn.execute("SET search_path = plain, public")
        conn.execute(_sql("plain"))
        for rel, cols in ts_cols.items():
            assert _columns(conn, f"plain.{rel}") == cols, rel
        conn.execute("SET search_path = public")
        # the worker's Timescale-path load: staged rows in, replays count nothing
        conn.execute(sink._STAGE_DDL)
        with conn.transaction():
            conn.execute(
                "INSERT INTO etl_stage VALUES (1, now(), NULL, 'a', 'x', 'info', '{}'),"
                " (2, now() - interval '3 days', NULL, 'a', 'y', 'error', '{}')"
            )
            first = conn.execute(sink._LOAD_TIMESCALE, LATE).fetchone()
        with conn.transaction():
            conn.execute(
                "INSERT INTO etl_stage VALUES (1, (SELECT created_at FROM"
                " audit_logs_ts WHERE source_id = 1), NULL, 'a', 'x', 'info', '{}')"
            )
            again = conn.execute(sink._LOAD_TIMESCALE, LATE).fetchone()
        assert first[0] == 2 and again[0] == 0
        # only the row 3 days late is noted for a refresh, as its minute bucket
        old = conn.execute("SELECT created_at FROM audit_logs_ts WHERE source_id = 2").fetchone()
        assert first[4] == [bucket_start(old[0])] and again[4] is None
        conn.execute(
            "CALL refresh_continuous_aggregate('audit_logs_1m', now() - interval '4 days', now())"
        )
        # the worker's retention sync reads the policy from timescaledb_information.jobs
        # the worker's retention sync reads the policies from timescaledb_information
        # (the aggregate's policy is on its materialisation hypertable)
        conn.execute(
            "CREATE SCHEMA timescaledb_information;"
            " CREATE TABLE timescaledb_information.jobs (job_id int, proc_name name,"
            " hypertable_schema name, hypertable_name name, config jsonb);"
            " CREATE TABLE timescaledb_information.continuous_aggregates (view_name name,"
            " materialization_hypertable_schema name, materialization_hypertable_name name);"
            " INSERT INTO timescaledb_information.continuous_aggregates VALUES"
            " ('audit_logs_1m', '_timescaledb_internal', '_materialized_hypertable_2');"
            " INSERT INTO timescaledb_information.jobs VALUES"
            " (1002, 'policy_retention', 'public', 'audit_logs_ts',"
            '  \'{"drop_after": "90 days"}\'),'
            " (1003, 'policy_retention', '_timescaledb_internal', '_materialized_hypertable_2',"
            '  \'{"drop_after": "400 days"}\')'
        )

    async def sync(days: int, relation: str = "audit_logs_ts") -> bool:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as aconn:
            return await sync_timescale_retention(aconn, days, relation)

    assert asyncio.run(sync(90)) is False  # as the migration set it
    assert asyncio.run(sync(30)) is True  # removed and added again with 30 days
    assert asyncio.run(sync(400, "audit_logs_1m")) is False
    assert asyncio.run(sync(365, "audit_logs_1m")) is True


def test_timescale_for_real_where_the_extension_exists(pg_admin_dsn, tmp_path) -> None:
    server, _ = timescale.server_dsn()
    pg_admin_dsn = server or pg_admin_dsn
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        have = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    if not have:
        pytest.skip(
            "timescaledb is not installed on this PostgreSQL (checked by parsing and"
            " stand-ins in test_timescale_migration_parses_and_runs_…)"
        )
    name = infra.unique_name("bt", "timescale")
    dsn = infra.create_database(pg_admin_dsn, name)
    try:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        except psycopg.Error as exc:
            pytest.skip(f"timescaledb cannot be created here: {str(exc).strip()}")
        migrate = subprocess.run(
            [sys.executable, "-m", "bridge_common", "--source-dsn", dsn],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert migrate.returncode == 0, migrate.stderr
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO audit_logs (actor, action, severity, created_at)"
                " SELECT 'u', 'a' || (g % 3), 'info', now() - g * interval '1 minute'"
                " FROM generate_series(1, 500) g"
            )
        env = {
            "BRIDGE_SOURCE_DSN": dsn,
            "BRIDGE_ETL_PORT": "0",
            "BRIDGE_NAMESPACE": name,
            "BRIDGE_REDIS_URL": infra.LOCAL_REDIS,
        }
        run = subprocess.run(
            [sys.executable, "-m", "bridge_etl", "--mode", "polling", "--once"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**__import__("os").environ, **env},
        )
        assert run.returncode == 0, run.stdout[-3000:]
        assert '"path": "timescale"' in run.stdout
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM audit_logs_ts").fetchone() == (500,)
            assert conn.execute("SELECT sum(events) FROM audit_logs_1m").fetchone() == (500,)
    finally:
        infra.drop_database(pg_admin_dsn, name)
