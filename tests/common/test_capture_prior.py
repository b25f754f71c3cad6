"""Migration 0007 against a real database: an UPDATE's outbox row carries `prior` (the old
values of the columns it changed), other changes carry none, primary-key changes still
give delete + insert, an UPDATE of no rows writes nothing (the e2e snapshot tests check
that the relay keeps the transaction id and `prior` in the history)."""

from __future__ import annotations

import psycopg


def _outbox(conn: psycopg.Connection, topic: str) -> list[tuple[str, str, object, object]]:
    rows = conn.execute(
        "SELECT op, key, prior, txid::text FROM bridge.outbox WHERE topic = %s ORDER BY seq",
        (topic,),
    ).fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def test_updates_record_the_old_values_they_changed(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE prior_t (a int, b text, status text, note text, PRIMARY KEY (a, b))"
        )
        conn.execute("SELECT bridge.watch('prior_t')")
        conn.execute("INSERT INTO prior_t VALUES (1, 'x', 'failed', 'n'), (2, 'y', 'ok', 'n')")
        with conn.transaction():
            conn.execute("UPDATE prior_t SET status = 'corrected' WHERE a = 1")
            txid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        conn.execute("UPDATE prior_t SET note = note")  # changes nothing
        conn.execute("UPDATE prior_t SET a = 3 WHERE a = 2")  # a key change
        conn.execute("UPDATE prior_t SET note = 'z' WHERE a = 99")  # no rows
        changes = _outbox(conn, "prior_t")
    assert txid is not None
    assert [c[:3] for c in changes[:3]] == [
        ("insert", '["1","x"]', None),
        ("insert", '["2","y"]', None),
        ("update", '["1","x"]', {"status": "failed"}),
    ]
    assert changes[2][3] == txid[0]
    # `note = note` on both rows: two updates without prior; the key change: delete of the
    # old key, insert of the new one; the UPDATE of no rows: nothing
    assert sorted(c[:3] for c in changes[3:5]) == [
        ("update", '["1","x"]', None),
        ("update", '["2","y"]', None),
    ]
    assert [c[:3] for c in changes[5:]] == [
        ("delete", '["2","y"]', None),
        ("insert", '["3","y"]', None),
    ]
