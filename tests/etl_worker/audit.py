"""Audit-log fixtures for the ETL tests: source rows, events, and source-vs-target checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import redis
from bridge_common.channels import Channels
from bridge_common.events import event_fragment_raw

# One text line per row, same rendering on both sides (same session, same TimeZone).
_SOURCE_SUM = """
SELECT count(*), coalesce(md5(string_agg(
    concat_ws('|', id, created_at, intent_id, actor, action, severity, details::text),
    ',' ORDER BY id)), '')
FROM audit_logs {where}
"""
_TARGET_SUM = """
SELECT count(*), coalesce(md5(string_agg(
    concat_ws('|', source_id, created_at, intent_id, actor, action, severity, details::text),
    ',' ORDER BY source_id)), '')
FROM audit_logs_ts {where}
"""


def insert_rows(
    dsn: str, n: int, *, hours: float = 30.0, offset_hours: float = 0.0, start: int = 0
) -> None:
    """`n` audit rows spread over the `hours` before now − `offset_hours` (several days)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO audit_logs (intent_id, actor, action, severity, details, created_at)
            SELECT CASE WHEN g %% 3 = 0 THEN gen_random_uuid() END,
                   'user-' || (g %% 17),
                   (ARRAY['intent.created', 'intent.updated', 'intent.corrected', 'login'])
                       [1 + g %% 4],
                   (ARRAY['debug','info','warning','error','critical'])[1 + (g / 7) %% 5],
                   jsonb_build_object('n', g, 'note', repeat('x', g %% 40)),
                   now() - make_interval(secs => %s * 3600.0)
                         - make_interval(secs => %s * 3600.0 * g / %s)
            FROM generate_series(%s + 1, %s + %s) g
            """,
            (offset_hours, hours, max(n, 1) + start, start, start, n),
        )


def source_sum(dsn: str, where: str = "") -> tuple[int, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(_SOURCE_SUM.format(where=where)).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return int(row[0]), str(row[1])


def target_sum(dsn: str, where: str = "") -> tuple[int, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(_TARGET_SUM.format(where=where)).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return int(row[0]), str(row[1])


#: each rollup level and its bucket width
ROLLUP_LEVELS = (
    ("audit_logs_1m", "1 minute"),
    ("audit_logs_1h", "1 hour"),
    ("audit_logs_1d", "1 day"),
)


def rollup_mismatches(dsn: str) -> list[Any]:
    """Rows where a rollup (per action and severity, or the all-actions totals; per
    minute, hour, day) differs from a GROUP BY over audit_logs_ts (empty = all equal).

    Plain path: the rollups are written with the rows, so it is checked at once. Timescale
    path: the continuous aggregates converge — rows behind its watermark show once the
    policy (every minute) or the worker's late-row refresh (every 30 s) has run — so this
    waits up to 90 s for it to agree, and returns what still differs then.
    """
    if not _is_hypertable(dsn):
        return _rollup_mismatches(dsn)
    deadline = time.monotonic() + 90.0
    while True:
        found = _rollup_mismatches(dsn)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _is_hypertable(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT relkind::text FROM pg_class WHERE oid = 'audit_logs_ts'::regclass"
        ).fetchone()
    return row is not None and row[0] != "p"


def _rollup_mismatches(dsn: str) -> list[Any]:
    out: list[Any] = []
    with psycopg.connect(dsn) as conn:
        for table, width in ROLLUP_LEVELS:
            out += conn.execute(
                f"""
                WITH truth AS (
                    SELECT date_bin('{width}', created_at, timestamptz '2000-01-01 00:00:00+00')
                           AS bucket, action, severity, count(*) AS events
                    FROM audit_logs_ts GROUP BY 1, 2, 3
                )
                SELECT '{table}', coalesce(t.bucket, r.bucket), coalesce(t.action, r.action),
                       coalesce(t.severity, r.severity), t.events, r.events
                FROM truth t FULL JOIN {table} r
                  ON (t.bucket, t.action, t.severity) = (r.bucket, r.action, r.severity)
                WHERE t.events IS DISTINCT FROM r.events
                """  # noqa: S608 - constant table names
            ).fetchall()
        for level, width in (("1m", "1 minute"), ("1h", "1 hour"), ("1d", "1 day")):
            out += conn.execute(
                f"""
                WITH truth AS (
                    SELECT date_bin('{width}', created_at, timestamptz '2000-01-01 00:00:00+00')
                           AS bucket,
                           count(*) FILTER (WHERE severity = 'debug') AS debug,
                           count(*) FILTER (WHERE severity = 'info') AS info,
                           count(*) FILTER (WHERE severity = 'warning') AS warning,
                           count(*) FILTER (WHERE severity = 'error') AS error,
                           count(*) FILTER (WHERE severity = 'critical') AS critical
                    FROM audit_logs_ts GROUP BY 1
                )
                SELECT 'audit_totals_{level}', coalesce(t.bucket, r.bucket),
                       (t.debug, t.info, t.warning, t.error, t.critical),
                       (r.debug, r.info, r.warning, r.error, r.critical)
                FROM truth t FULL JOIN audit_totals_{level} r ON t.bucket = r.bucket
                WHERE (t.debug, t.info, t.warning, t.error, t.critical)
                      IS DISTINCT FROM (r.debug, r.info, r.warning, r.error, r.critical)
                """  # noqa: S608 - constant table names
            ).fetchall()
    return out


def publish_rows(redis_url: str, namespace: str, dsn: str, where: str = "") -> int:
    """Publish the source rows as `audit_logs` insert events, the way the notifier does."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT id, to_jsonb(a)::text FROM audit_logs a {where} ORDER BY id"  # noqa: S608
        ).fetchall()
    frags = [
        (None, event_fragment_raw("insert", str(i), j, "2026-01-01T00:00:00Z")) for i, j in rows
    ]
    publish_fragments(redis_url, namespace, frags)
    return len(rows)


def publish_fragments(
    redis_url: str, namespace: str, frags: list[tuple[int | None, bytes]], topic: str = "audit_logs"
) -> None:
    import asyncio

    from bridge_common.redis import EventPublisher
    from redis.asyncio import Redis

    async def go() -> None:
        client = Redis.from_url(redis_url)
        try:
            pub = EventPublisher(client, Channels(namespace))
            for i in range(0, len(frags), 500):
                await pub.publish(topic, frags[i : i + 500])
        finally:
            await client.aclose()

    asyncio.run(go())


def event_of(row: dict[str, Any]) -> tuple[None, bytes]:
    return (None, event_fragment_raw("insert", str(row.get("id")), json.dumps(row), "t"))


def wait_for(pred: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def wait_converged(dsn: str, timeout: float = 45.0) -> tuple[int, str]:
    want = source_sum(dsn)
    wait_for(lambda: target_sum(dsn)[0] >= want[0], timeout, f"{want[0]} rows in target")
    return want


def rows_inserted(url: str) -> float:
    """Sum of `bridge_etl_rows_total` on a worker's /metrics."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("bridge_etl_rows_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def dead_letters(redis_url: str, namespace: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [f for _, f in client.xrange(Channels(namespace).etl_dead_letter)]
    finally:
        client.close()
