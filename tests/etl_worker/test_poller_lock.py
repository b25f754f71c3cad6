"""The poller's lock session: TCP keepalives on both ends (so a vanished host's session
ends within seconds), and a session that dies releases the lock to a standby worker."""

from __future__ import annotations

import psycopg
from bridge_common.db import keepalive_conninfo
from bridge_etl.polling import APPLICATION_NAME, Poller
from psycopg.conninfo import conninfo_to_dict

from tests.etl_worker.audit import insert_rows, source_sum, target_sum, wait_converged, wait_for

_HOLDER = """
SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s
  AND a.datname = current_database()
"""


def test_lock_conninfo_has_keepalives_on_both_ends(migrated_dsn: str) -> None:
    dsn = migrated_dsn + "?options=-c%20statement_timeout%3D5000"
    poller = Poller(
        None,  # type: ignore[arg-type] - only the conninfo is looked at
        dsn,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        batch_size=1,
        poll_interval=1,
        settle_grace=1,
    )
    info = conninfo_to_dict(poller.lock_conninfo)
    assert info["keepalives"] == "1" and info["keepalives_idle"] == "5"
    assert info["keepalives_interval"] == "2" and info["keepalives_count"] == "3"
    assert info["application_name"] == APPLICATION_NAME
    assert "statement_timeout=5000" in info["options"]  # the DSN's own options are kept
    # the server applies its side to that session
    with psycopg.connect(keepalive_conninfo(migrated_dsn, application_name="t")) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        }
    assert settings == {
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
    }


def holder(dsn: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(_HOLDER, (APPLICATION_NAME,)).fetchall()
    return int(rows[0][0]) if len(rows) == 1 else None


def test_dead_lock_session_hands_the_lock_to_a_standby(spawn, etl_env, clean) -> None:
    env = {**etl_env, "BRIDGE_ETL_MODE": "polling"}
    a = spawn("etl", env)
    b = spawn("etl", env)
    first = wait_for(lambda: holder(clean), 20, "a poller holding the lock")
    insert_rows(clean, 200)
    wait_converged(clean)
    # the leader's session dies under it (as when PostgreSQL drops a vanished client)
    with psycopg.connect(clean, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (first,))
    second = wait_for(lambda: (h := holder(clean)) and h != first and h, 20, "lock re-taken")
    assert second != first
    insert_rows(clean, 200, start=200)
    wait_converged(clean)
    assert target_sum(clean) == source_sum(clean)
    assert a.alive() and b.alive()
    assert a.stop() == 0 and b.stop() == 0
