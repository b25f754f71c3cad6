"""The capture trigger of migration 0006 against a real database: `bridge.traceparent`, set
with SET LOCAL in the writing transaction, is stored with every outbox row the statement
writes (insert, update, key change, delete, truncate); unset, empty or malformed → NULL,
and the write itself never fails over it."""

from __future__ import annotations

import psycopg
import pytest

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def dsn(migrated_dsn: str) -> str:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE tp_items (id int PRIMARY KEY, v int)")
        conn.execute("SELECT bridge.watch('tp_items'::regclass)")
    return migrated_dsn


def _traced(conn: psycopg.Connection, traceparent: str | None, *stmts: str) -> list[tuple]:
    conn.execute("DELETE FROM bridge.outbox")
    with conn.transaction():
        if traceparent is not None:
            conn.execute("SELECT set_config('bridge.traceparent', %s, true)", (traceparent,))
        for stmt in stmts:
            conn.execute(stmt)  # type: ignore[arg-type]
    return conn.execute(
        "SELECT op, key, traceparent FROM bridge.outbox WHERE topic = 'tp_items' ORDER BY seq"
    ).fetchall()


def test_every_row_of_every_kind_of_statement_carries_the_traceparent(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = _traced(
            conn,
            TP,
            "INSERT INTO tp_items VALUES (1, 1), (2, 2)",
            "UPDATE tp_items SET v = v + 1",
            "UPDATE tp_items SET id = 3 WHERE id = 2",
            "DELETE FROM tp_items WHERE id = 1",
            "TRUNCATE tp_items",
        )
    assert [(op, key) for op, key, _ in rows] == [
        ("insert", "1"),
        ("insert", "2"),
        ("update", "1"),
        ("update", "2"),
        ("delete", "2"),
        ("insert", "3"),
        ("delete", "1"),
        ("truncate", ""),
    ]
    assert {tp for _, _, tp in rows} == {TP}


@pytest.mark.parametrize(
    "value",
    [
        None,  # never set
        "",  # set empty
        "junk",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        TP + "-extra'\"",
    ],
)
def test_unset_or_malformed_stores_nothing_and_the_write_succeeds(
    dsn: str, value: str | None
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM tp_items")
        rows = _traced(conn, value, "INSERT INTO tp_items VALUES (10, 1)")
    assert rows == [("insert", "10", None)]


def test_set_local_ends_with_the_transaction(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM tp_items")
        _traced(conn, TP, "INSERT INTO tp_items VALUES (20, 1)")
        rows = _traced(conn, None, "INSERT INTO tp_items VALUES (21, 1)")
    assert rows == [("insert", "21", None)]
