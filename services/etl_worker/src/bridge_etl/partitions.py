"""Daily partitions of `audit_logs_ts` on the plain-PostgreSQL path: created ahead and on
demand for the days a batch touches, dropped once past the retention; the per-minute,
per-hour and per-day rollups and the reject log are pruned on the same schedule."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from bridge_common.logging import get_logger
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .target import ROLLUP_RELATIONS

log = get_logger(__name__)

PARENT = "audit_logs_ts"
#: the rollup tables, pruned on their own schedule (triggers do not propagate DELETE)
ROLLUPS = ROLLUP_RELATIONS
_NAME_RE = re.compile(r"^audit_logs_ts_p(\d{8})$")
#: serialises partition DDL between workers (pg_advisory_xact_lock key)
_DDL_LOCK = 0x6574_6C70  # "etlp"


def partition_name(day: date) -> str:
    return f"{PARENT}_p{day:%Y%m%d}"


def first_kept_day(now: datetime, retention_days: int) -> date:
    """Rows before this UTC day are expired; partitions of earlier days are dropped."""
    return now.astimezone(UTC).date() - timedelta(days=retention_days)


class Partitions:
    """Creates and drops the daily partitions (see module docstring)."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        retention_days: int,
        rollup_retention_days: int,
        ahead: int,
    ) -> None:
        self.pool = pool
        self.retention_days = retention_days
        self.rollup_retention_days = rollup_retention_days
        self.ahead = ahead
        self._known: set[date] = set()

    def expired_before(self, now: datetime | None = None) -> datetime:
        """created_at below this is past the retention (its partition is, or will be, gone)."""
        day = first_kept_day(now or datetime.now(UTC), self.retention_days)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    async def existing(self, conn: psycopg.AsyncConnection[Any]) -> dict[date, str]:
        cur = await conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass",
            (PARENT,),
        )
        out: dict[date, str] = {}
        for (name,) in await cur.fetchall():
            m = _NAME_RE.match(name)
            if m:
                out[datetime.strptime(m.group(1), "%Y%m%d").date()] = name  # noqa: DTZ007
        return out

    async def ensure(self, days: Iterable[date]) -> list[date]:
        """Make sure a partition exists for each day; returns the days created."""
        wanted = sorted(set(days) - self._known)
        if not wanted:
            return []
        created: list[date] = []
        async with self.pool.connection() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                have = await self.existing(conn)
                for day in wanted:
                    if day in have:
                        continue
                    lo = datetime(day.year, day.month, day.day, tzinfo=UTC)
                    hi = lo + timedelta(days=1)
                    try:
                        async with conn.transaction():
                            await conn.execute(
                                sql.SQL(
                                    "CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
                                ).format(
                                    sql.Identifier(partition_name(day)),
                                    sql.Identifier(PARENT),
                                    sql.Literal(lo.isoformat()),
                                    sql.Literal(hi.isoformat()),
                                )
                            )
                        created.append(day)
                    except psycopg.errors.InvalidObjectDefinition as exc:
                        # an operator made a wider partition covering this day: use it
                        log.info("partition.covered", day=day.isoformat(), detail=str(exc))
        self._known.update(wanted)
        if created:
            log.info("partition.created", days=[d.isoformat() for d in created])
        return created

    async def maintain(self, now: datetime | None = None) -> tuple[list[date], list[date]]:
        """Create partitions ahead, drop expired ones, prune the rollup and reject log."""
        now = now or datetime.now(UTC)
        today = now.astimezone(UTC).date()
        created = await self.ensure(today + timedelta(days=i) for i in range(self.ahead + 1))
        keep_from = first_kept_day(now, self.retention_days)
        dropped: list[date] = []
        async with self.pool.connection() as conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                for day, name in sorted((await self.existing(conn)).items()):
                    if day < keep_from:
                        await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
                        dropped.append(day)
                for rollup in ROLLUPS:
                    await conn.execute(
                        sql.SQL(
                            "DELETE FROM {} WHERE bucket < %s::timestamptz"
                            " - make_interval(days => %s)"
                        ).format(sql.Identifier(rollup)),
                        (now, self.rollup_retention_days),
                    )
        await self.prune_rejects(now)
        self._known.difference_update(dropped)
        if dropped:
            log.info("partition.dropped", days=[d.isoformat() for d in dropped])
        return created, dropped

    async def prune_rejects(self, now: datetime | None = None) -> None:
        """Forget rejects older than the retention (both paths)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM bridge.etl_rejects"
                " WHERE rejected_at < %s::timestamptz - make_interval(days => %s)",
                (now or datetime.now(UTC), self.retention_days),
            )
            await conn.commit()
