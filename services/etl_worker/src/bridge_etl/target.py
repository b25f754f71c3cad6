"""Which storage path the target database offers: a TimescaleDB hypertable or native
partitions — decided once at start-up from what `bridge-migrate` created."""

from __future__ import annotations

from typing import Any, Literal

import psycopg
from psycopg import sql

from .errors import TargetNotMigrated

Path = Literal["timescale", "plain"]


async def detect_path(conn: psycopg.AsyncConnection[Any]) -> Path:
    """`timescale` when `audit_logs_ts` is a hypertable, `plain` when it is partitioned."""
    cur = await conn.execute(
        "SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass('audit_logs_ts')"
    )
    row = await cur.fetchone()
    if row is None:
        raise TargetNotMigrated(
            "the target database has no audit_logs_ts table; run `bridge-migrate` first"
        )
    cur = await conn.execute(
        "SELECT to_regclass('bridge.etl_state') IS NOT NULL,"
        " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    )
    state_row = await cur.fetchone()
    assert state_row is not None
    has_state, has_timescale = state_row
    if not has_state:
        raise TargetNotMigrated(
            "the target database has no bridge.etl_state table; run `bridge-migrate` first"
        )
    if row[0] == "p":
        return "plain"
    if has_timescale:
        cur = await conn.execute(
            "SELECT 1 FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'audit_logs_ts'"
        )
        if await cur.fetchone() is not None:
            return "timescale"
    raise TargetNotMigrated(
        "audit_logs_ts is neither partitioned nor a hypertable; it was not created by"
        " `bridge-migrate`"
    )


#: every rollup level (continuous aggregates on TimescaleDB, tables on the plain path),
#: kept for `BRIDGE_ETL_ROLLUP_RETENTION_DAYS`
ROLLUP_RELATIONS = (
    "audit_logs_1m",
    "audit_logs_1h",
    "audit_logs_1d",
    "audit_totals_1m",
    "audit_totals_1h",
    "audit_totals_1d",
)

#: the migration's retention policy on each relation (and the setting that changes it)
_RETENTION = """
SELECT (j.config ->> 'drop_after')::interval = make_interval(days => %s)
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.continuous_aggregates ca
       ON ca.materialization_hypertable_schema = j.hypertable_schema
      AND ca.materialization_hypertable_name = j.hypertable_name
WHERE j.proc_name = 'policy_retention' AND coalesce(ca.view_name, j.hypertable_name) = %s
"""


async def sync_timescale_retention(
    conn: psycopg.AsyncConnection[Any], days: int, relation: str = "audit_logs_ts"
) -> bool:
    """Make `relation`'s retention policy drop chunks after `days`; True if changed.

    The migrations install 90 days on the hypertable (`BRIDGE_ETL_RETENTION_DAYS`) and 400
    on every aggregate (`BRIDGE_ETL_ROLLUP_RETENTION_DAYS`); the settings win.
    """
    if relation != "audit_logs_ts" and relation not in ROLLUP_RELATIONS:
        raise ValueError(f"no retention policy is kept on {relation}")
    cur = await conn.execute(_RETENTION, (days, relation))
    row = await cur.fetchone()
    if row is not None and row[0]:
        return False
    await conn.execute(
        sql.SQL("SELECT remove_retention_policy({}, if_exists => TRUE)").format(
            sql.Literal(relation)
        )
    )
    await conn.execute(
        sql.SQL("SELECT add_retention_policy({}, make_interval(days => %s))").format(
            sql.Literal(relation)
        ),
        (days,),
    )
    return True
