"""Which storage path the target database offers: a TimescaleDB hypertable or native
partitions — decided once at start-up from what `bridge-migrate` created."""

from __future__ import annotations

from typing import Any, Literal

import psycopg

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


async def sync_timescale_retention(conn: psycopg.AsyncConnection[Any], days: int) -> bool:
    """Make the hypertable's retention policy drop chunks after `days`; True if changed.

    The migration installs 90 days; `BRIDGE_ETL_RETENTION_DAYS` may ask for another value.
    """
    cur = await conn.execute(
        "SELECT (config ->> 'drop_after')::interval = make_interval(days => %s)"
        " FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_retention' AND hypertable_name = 'audit_logs_ts'",
        (days,),
    )
    row = await cur.fetchone()
    if row is not None and row[0]:
        return False
    await conn.execute("SELECT remove_retention_policy('audit_logs_ts', if_exists => TRUE)")
    await conn.execute(
        "SELECT add_retention_policy('audit_logs_ts', make_interval(days => %s))", (days,)
    )
    return True
