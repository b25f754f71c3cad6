"""Seed the metrics API's sources directly: audit rows with their per-minute rollup (as the
ETL writes them on plain PostgreSQL; on TimescaleDB the continuous aggregate counts them,
refreshed over the seeded minutes), intents, heartbeats and alert state in Redis."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import psycopg
from bridge_common.channels import Channels
from bridge_common.events import Heartbeat, dumps
from bridge_etl.target import ROLLUP_RELATIONS
from psycopg.types.json import Jsonb


def ensure_partitions(conn: psycopg.Connection[Any], first: date, last: date) -> None:
    """One partition per UTC day from `first` to `last` (inclusive), if missing."""
    d = first
    while d <= last:
        name = f"audit_logs_ts_seed_{d:%Y%m%d}"
        lo = datetime(d.year, d.month, d.day, tzinfo=UTC)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF audit_logs_ts "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{(lo + timedelta(days=1)).isoformat()}')"
        )
        d += timedelta(days=1)


@dataclass
class AuditRow:
    created_at: datetime
    action: str = "intent.created"
    severity: str = "info"
    actor: str = "tester"
    intent_id: uuid.UUID | None = None
    details: dict[str, Any] = field(default_factory=dict)


_next_id = [int(time.time() * 1000) % 10_000_000 * 1000]


def is_timescale(conn: psycopg.Connection[Any]) -> bool:
    """audit_logs_ts is a hypertable (not a partitioned table)."""
    row = conn.execute(
        "SELECT relkind::text FROM pg_class WHERE oid = 'audit_logs_ts'::regclass"
    ).fetchone()
    return row is not None and row[0] != "p"


def add_audit(conn: psycopg.Connection[Any], rows: list[AuditRow]) -> list[int]:
    """Insert rows into audit_logs_ts and count them into audit_logs_1m, in one transaction
    (plain path); on TimescaleDB insert them and refresh the aggregate over their minutes,
    so they show whatever its policy has materialised already. `conn` is autocommit."""
    if not rows:
        return []
    if is_timescale(conn):
        return _add_audit_timescale(conn, rows)
    days = sorted({r.created_at.astimezone(UTC).date() for r in rows})
    ensure_partitions(conn, days[0], days[-1])
    ids = []
    with conn.transaction():
        for r in rows:
            _next_id[0] += 1
            ids.append(_next_id[0])
            conn.execute(
                "INSERT INTO audit_logs_ts (source_id, created_at, intent_id, actor, action, "
                "severity, details) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    _next_id[0],
                    r.created_at,
                    r.intent_id,
                    r.actor,
                    r.action,
                    r.severity,
                    Jsonb(r.details),
                ),
            )
            conn.execute(
                "INSERT INTO audit_logs_1m (bucket, action, severity, events) "
                "VALUES (date_trunc('minute', %s::timestamptz), %s, %s, 1) "
                "ON CONFLICT (bucket, action, severity) "
                "DO UPDATE SET events = audit_logs_1m.events + 1",
                (r.created_at, r.action, r.severity),
            )
    return ids


def _add_audit_timescale(conn: psycopg.Connection[Any], rows: list[AuditRow]) -> list[int]:
    ids = []
    with conn.transaction():
        for r in rows:
            _next_id[0] += 1
            ids.append(_next_id[0])
            conn.execute(
                "INSERT INTO audit_logs_ts (source_id, created_at, intent_id, actor, action, "
                "severity, details) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    _next_id[0],
                    r.created_at,
                    r.intent_id,
                    r.actor,
                    r.action,
                    r.severity,
                    Jsonb(r.details),
                ),
            )
    # every level, bottom up (hours are built on minutes, days on hours), over the whole
    # days the rows fall in so each level's buckets are complete
    first = min(r.created_at for r in rows).replace(hour=0, minute=0, second=0, microsecond=0)
    last = max(r.created_at for r in rows).replace(hour=0, minute=0, second=0, microsecond=0)
    for relation in ROLLUP_RELATIONS:
        conn.execute(
            "CALL refresh_continuous_aggregate(%s, %s, %s)",
            (relation, first, last + timedelta(days=1)),
            prepare=False,  # PGlite keeps prepared statements across its sessions
        )
    return ids


def add_intents(conn: psycopg.Connection[Any], status: str, n: int, updated_at: datetime) -> None:
    with conn.transaction():
        for i in range(n):
            conn.execute(
                "INSERT INTO intents (title, status, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s)",
                (f"{status} {i}", status, updated_at, updated_at),
            )


def heartbeat(
    service: str,
    instance: str,
    status: dict[str, Any],
    *,
    age: float = 0.0,
    interval: float = 3600.0,
) -> Heartbeat:
    now = time.time()
    return Heartbeat(
        service=service,
        instance=instance,
        ts=now - age,
        started_at=now - age - 60,
        interval=interval,
        status=status,
    )


def put_heartbeats(r: Any, ns: str, beats: list[Heartbeat]) -> None:
    ch = Channels(ns)
    for hb in beats:
        r.hset(ch.services, f"{hb.service}/{hb.instance}", dumps(hb))


def put_alert_states(r: Any, ns: str, states: dict[str, Any]) -> None:
    ch = Channels(ns)
    for fp, state in states.items():
        r.hset(ch.alert_state, fp, state if isinstance(state, bytes) else orjson.dumps(state))
