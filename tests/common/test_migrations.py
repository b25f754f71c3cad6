from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import psycopg
import pytest
from bridge_common import migrate


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(coro)


def _cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "BRIDGE_SOURCE_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "bridge_common", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _outbox(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT topic, op, key, payload FROM bridge.outbox ORDER BY seq"
        ).fetchall()


@pytest.fixture(scope="module")
def dsn(db_dsn: str) -> str:
    return db_dsn


def test_check_reports_pending_then_migrate_then_up_to_date(dsn: str) -> None:
    check = _cli("--check", dsn=dsn)
    assert check.returncode == 1 and "pending source 0001_source_tables" in check.stdout
    first = _cli(dsn=dsn)
    assert first.returncode == 0, first.stderr
    assert "applied source 0002_outbox" in first.stdout
    second = _cli(dsn=dsn)
    assert second.returncode == 0 and "up to date" in second.stdout
    assert _cli("--check", dsn=dsn).returncode == 0


def test_applying_twice_is_a_noop(migrated_dsn: str) -> None:
    assert _run(migrate.apply(migrated_dsn, "source")) == []
    with psycopg.connect(migrated_dsn) as conn:
        n = conn.execute(
            "SELECT count(*) FROM bridge.schema_migrations WHERE scope='source'"
        ).fetchone()
    assert n is not None and n[0] == len(
        migrate.select_variants(migrate.load_migrations("source"), timescale=False)
    )


def test_concurrent_migrations_serialise(db_dsn: str, pg_admin_dsn: str) -> None:
    from tests.support import infra

    name = infra.unique_name("bt", "concurrent")
    other = infra.create_database(pg_admin_dsn, name)
    try:

        async def both() -> list[list[migrate.Migration]]:
            return list(
                await asyncio.gather(migrate.apply(other, "source"), migrate.apply(other, "source"))
            )

        a, b = _run(both())
        assert sorted([len(a), len(b)])[0] == 0 and max(len(a), len(b)) > 0
    finally:
        infra.drop_database(pg_admin_dsn, name)


def test_one_outbox_row_per_changed_row(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute("INSERT INTO intents (title) SELECT 'i' || g FROM generate_series(1, 5) g")
        conn.execute("UPDATE intents SET status = 'done' WHERE title IN ('i1', 'i2')")
        conn.execute("DELETE FROM intents WHERE title = 'i3'")
        conn.execute("UPDATE intents SET status = status WHERE false")  # touches nothing
        conn.commit()
        ids = {r[0]: str(r[1]) for r in conn.execute("SELECT title, id FROM intents")}
    rows = _outbox(migrated_dsn)
    assert [r[1] for r in rows] == ["insert"] * 5 + ["update"] * 2 + ["delete"]
    assert {r[0] for r in rows} == {"intents"}
    upd = [r for r in rows if r[1] == "update"]
    assert {r[2] for r in upd} == {ids["i1"], ids["i2"]}
    assert all(r[3]["status"] == "done" for r in upd)
    assert rows[-1][3]["title"] == "i3"  # delete carries the old row


def test_rolled_back_transaction_writes_nothing(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("DELETE FROM bridge.outbox")
        conn.commit()
        conn.execute("INSERT INTO intents (title) VALUES ('never')")
        conn.execute("INSERT INTO audit_logs (actor, action) VALUES ('a', 'b')")
        conn.rollback()
    assert _outbox(migrated_dsn) == []


def test_rows_larger_than_8000_bytes_are_whole(migrated_dsn: str) -> None:
    big = {"blob": "x" * 100_000, "n": list(range(1000))}
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute(
            "INSERT INTO audit_logs (actor, action, details) VALUES ('a', 'big', %s)",
            (json.dumps(big),),
        )
        conn.commit()
    rows = _outbox(migrated_dsn)
    assert len(rows) == 1 and rows[0][0] == "audit_logs"
    assert rows[0][3]["details"] == big
    assert rows[0][2].isdigit()


def test_outbox_rows_carry_the_writing_transaction(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute("INSERT INTO intents (title) VALUES ('a'), ('b')")
        txid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        conn.commit()
        got = conn.execute("SELECT DISTINCT txid::text FROM bridge.outbox").fetchall()
    assert got == [(txid,)]


def test_watch_any_table_with_composite_key(migrated_dsn: str) -> None:
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS app")
        conn.execute(
            "CREATE TABLE app.orders (region text, n int, total numeric, PRIMARY KEY (region, n))"
        )
        conn.execute("CREATE TABLE app.nokey (x int)")
        conn.commit()
    ok = _cli("--watch", "app.orders", dsn=migrated_dsn)
    assert ok.returncode == 0, ok.stderr
    assert "watching app.orders on topic orders" in ok.stdout
    bad = _cli("--watch", "app.nokey", dsn=migrated_dsn)
    assert bad.returncode == 1 and "no primary key" in bad.stderr
    missing = _cli("--watch", "app.missing", dsn=migrated_dsn)
    assert missing.returncode == 1 and "app.missing" in missing.stderr
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute("INSERT INTO app.orders VALUES ('eu', 7, 9.5)")
        conn.commit()
        topics = conn.execute("SELECT topic FROM bridge.watched_tables ORDER BY 1").fetchall()
    assert [t[0] for t in topics] == ["audit_logs", "intents", "orders"]
    rows = _outbox(migrated_dsn)
    assert [(r[0], r[1], r[2]) for r in rows] == [("orders", "insert", '["eu","7"]')]
    assert _cli("--unwatch", "app.orders", dsn=migrated_dsn).returncode == 0
    with psycopg.connect(migrated_dsn) as conn:
        conn.execute("DELETE FROM bridge.outbox")
        conn.execute("INSERT INTO app.orders VALUES ('eu', 8, 1)")
        conn.commit()
    assert _outbox(migrated_dsn) == []


def test_unreachable_database_is_one_line(tmp_path) -> None:
    proc = _cli(dsn="postgresql://127.0.0.1:1/nowhere")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("bridge-migrate: cannot connect")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_statement_splitter_respects_quotes_and_dollar_bodies() -> None:
    text = """-- c; here
    CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;
    SELECT 'a;b', "x;y" FROM t; /* ; */
    SELECT $tag$ ; $tag$;
    """
    stmts = migrate.split_statements(text)
    assert len(stmts) == 3
    assert stmts[0].endswith("$$ SELECT 1; $$")
