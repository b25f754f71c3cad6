"""The capture SQL (migration 0003) against a real database: unambiguous composite keys,
primary-key changes signalled as delete + insert, TRUNCATE captured, Bridge's own schema
and reserved topic names refused at `--watch`."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest
from bridge_common.channels import RESERVED_TOPICS
from bridge_common.migrate import load_migrations

from tests.support.infra import create_database, drop_database, unique_name


def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "BRIDGE_SOURCE_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "bridge_common", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _changes(conn: psycopg.Connection, topic: str) -> list[tuple[str, str, object]]:
    rows = conn.execute(
        "SELECT op, key, payload FROM bridge.outbox WHERE topic = %s ORDER BY seq", (topic,)
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


@pytest.fixture(scope="module")
def dsn(migrated_dsn: str) -> str:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS cap")
        conn.execute("CREATE TABLE cap.pairs (a text, b text, v int, PRIMARY KEY (a, b))")
        conn.execute("CREATE TABLE cap.items (id text PRIMARY KEY, v int)")
        conn.execute("CREATE TABLE cap.alerts (id int PRIMARY KEY)")
    for table in ("cap.pairs", "cap.items"):
        done = _cli("--watch", table, dsn=migrated_dsn)
        assert done.returncode == 0, done.stderr
    return migrated_dsn


def test_composite_keys_are_unambiguous_and_single_keys_unchanged(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute("INSERT INTO cap.pairs VALUES ('1', 'x,y', 1), ('1,x', 'y', 2)")
        conn.execute("INSERT INTO cap.items VALUES ('a,b', 1), ('[\"q\"]', 2)")
        pairs = _changes(conn, "pairs")
        items = _changes(conn, "items")
    keys = [k for _, k, _ in pairs]
    assert keys == ['["1","x,y"]', '["1,x","y"]']
    assert [json.loads(k) for k in keys] == [["1", "x,y"], ["1,x", "y"]]
    assert [k for _, k, _ in items] == ["a,b", '["q"]']  # one column: its value as text


def test_primary_key_change_is_a_delete_then_an_insert(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO cap.items VALUES ('k1', 1), ('k2', 2)")
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute("UPDATE cap.items SET id = 'k1-renamed', v = 10 WHERE id = 'k1'")
        conn.execute("UPDATE cap.items SET v = 20 WHERE id = 'k2'")
        changes = _changes(conn, "items")
    assert [(op, key) for op, key, _ in changes] == [
        ("delete", "k1"),
        ("insert", "k1-renamed"),
        ("update", "k2"),
    ]
    assert changes[0][2] == {"id": "k1", "v": 1}  # the old row, as a delete carries it
    assert changes[1][2] == {"id": "k1-renamed", "v": 10}


def test_truncate_is_captured_once(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO cap.items VALUES ('t1', 1) ON CONFLICT DO NOTHING")
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute("TRUNCATE cap.items")
        assert _changes(conn, "items") == [("truncate", "", {})]
        # an aborted TRUNCATE leaves nothing
        with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
            conn.execute("TRUNCATE cap.pairs")
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'abort'; END $$")
        assert _changes(conn, "pairs") == []


@pytest.mark.parametrize("table", ["bridge.outbox", "bridge.watched_tables"])
def test_bridge_own_schema_is_refused(dsn: str, table: str) -> None:
    done = _cli("--watch", table, dsn=dsn)
    assert done.returncode == 1
    assert "which Bridge Lite cannot watch" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        # application writes still work (no recursion)
        conn.execute("INSERT INTO intents (title) VALUES ('after refusal')")
        watched = conn.execute("SELECT table_name FROM bridge.watched_tables").fetchall()
    assert all(not t.startswith("bridge.") for (t,) in watched)


def test_reserved_topics_are_refused(dsn: str) -> None:
    assert "alerts" in RESERVED_TOPICS
    by_name = _cli("--watch", "cap.alerts", dsn=dsn)
    assert by_name.returncode == 1 and "reserved" in by_name.stderr, by_name.stderr
    by_option = _cli("--watch", "cap.items", "--topic", "Alerts", dsn=dsn)
    assert by_option.returncode == 1 and "reserved" in by_option.stderr
    ok = _cli("--watch", "cap.alerts", "--topic", "app_alerts", dsn=dsn)
    assert ok.returncode == 0 and "on topic app_alerts" in ok.stdout
    with psycopg.connect(dsn) as conn:
        (sql_list,) = conn.execute("SELECT bridge.reserved_topics()").fetchone()
    assert set(sql_list) == set(RESERVED_TOPICS)


def test_migration_removes_an_existing_watch_on_bridge_schema(pg_admin_dsn: str) -> None:
    """A database where `bridge.outbox` was watched before 0003 is repaired by it."""
    name = unique_name("t", "capture_repair")
    fresh = create_database(pg_admin_dsn, name)
    try:
        by_version = {m.version: m for m in load_migrations("source")}
        with psycopg.connect(fresh, autocommit=True) as conn:
            # a database at 0002 with the old, recursive watch on the outbox
            for version in ("0001_source_tables", "0002_outbox"):
                conn.execute(by_version[version].sql.encode())
            conn.execute("SELECT bridge.watch('bridge.outbox')")
            with pytest.raises(psycopg.errors.StatementTooComplex):
                conn.execute("INSERT INTO intents (title) VALUES ('recurses')")
            [v3] = [v for v in by_version if v.startswith("0003")]
            conn.execute(by_version[v3].sql.encode())
            conn.execute("INSERT INTO intents (title) VALUES ('fine now')")
            watched = conn.execute(
                "SELECT table_name FROM bridge.watched_tables ORDER BY 1"
            ).fetchall()
        assert [t for (t,) in watched] == ["audit_logs", "intents"]
    finally:
        drop_database(pg_admin_dsn, name)


def test_one_statement_moving_some_keys_and_keeping_others(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO cap.items VALUES ('m1', 1), ('m2', 2)")
        conn.execute("INSERT INTO cap.pairs VALUES ('p', '1', 1), ('p', '2', 2)")
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute(
            "UPDATE cap.items SET id = CASE id WHEN 'm1' THEN 'm1b' ELSE id END, v = v + 1"
            " WHERE id IN ('m1', 'm2')"
        )
        conn.execute("UPDATE cap.pairs SET b = b || 'x' WHERE a = 'p' AND b = '1'")
        conn.execute("UPDATE cap.items SET v = v WHERE id = 'nothing-matches'")
        items = [(op, key) for op, key, _ in _changes(conn, "items")]
        pairs = [(op, key) for op, key, _ in _changes(conn, "pairs")]
    assert items[0] == ("delete", "m1")  # the old key goes first
    assert sorted(items[1:]) == [("insert", "m1b"), ("update", "m2")]
    assert pairs == [("delete", '["p","1"]'), ("insert", '["p","1x"]')]
