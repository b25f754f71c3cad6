"""`BRIDGE_TARGET_STORAGE` and how `bridge-migrate` picks the target's variant; a failure
is reported as itself, whatever cleanup follows it."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import psycopg
import pytest
from bridge_common import migrate
from bridge_common.errors import MigrationError
from bridge_common.migrate import TimescaleState, choose_variant

from tests.support import infra

NONE = TimescaleState(installed=False, created=False, preloaded=False)
INSTALLED = TimescaleState(installed=True, created=False, preloaded=False)
PRELOADED = TimescaleState(installed=True, created=False, preloaded=True)
CREATED = TimescaleState(installed=True, created=True, preloaded=True)


@pytest.mark.parametrize(
    ("storage", "state", "recorded", "want"),
    [
        ("auto", NONE, None, "plain"),
        # installed but not preloaded: CREATE EXTENSION would end the session with FATAL
        ("auto", INSTALLED, None, "plain"),
        ("auto", PRELOADED, None, "timescale"),
        ("auto", CREATED, None, "timescale"),
        ("plain", CREATED, None, "plain"),
        ("timescale", PRELOADED, None, "timescale"),
        ("timescale", CREATED, None, "timescale"),
        # a database keeps the variant it was migrated with
        ("auto", CREATED, "plain", "plain"),
        ("auto", NONE, "timescale", "timescale"),
        ("timescale", CREATED, "timescale", "timescale"),
    ],
)
def test_variant_choice(storage, state, recorded, want) -> None:
    assert choose_variant(storage, state, recorded) == want


@pytest.mark.parametrize(
    ("storage", "state", "recorded", "says"),
    [
        ("timescale", NONE, None, "not installed"),
        ("timescale", INSTALLED, None, "add it to shared_preload_libraries"),
        ("timescale", CREATED, "plain", "migrated for plain storage"),
        ("plain", CREATED, "timescale", "migrated for timescale storage"),
    ],
)
def test_storage_that_cannot_be_had_is_one_line(storage, state, recorded, says) -> None:
    with pytest.raises(MigrationError) as err:
        choose_variant(storage, state, recorded)
    text = str(err.value)
    assert says in text and "\n" not in text
    assert text.startswith("BRIDGE_TARGET_STORAGE=")


def test_preload_names_are_read_like_the_server_does() -> None:
    assert migrate.preload_names("") == set()
    assert migrate.preload_names("timescaledb") == {"timescaledb"}
    assert migrate.preload_names(
        " pg_stat_statements , '$libdir/timescaledb.so'".replace("'", '"')
    ) == {
        "pg_stat_statements",
        "timescaledb",
    }
    assert "timescaledb" not in migrate.preload_names("timescaledb_toolkit")


def _cli(dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge_common"],
        env={"PATH": "/usr/bin:/bin", "BRIDGE_SOURCE_DSN": dsn, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _timescale_installed(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    return row is not None


def test_cli_storage_setting(db_dsn: str) -> None:
    bad = _cli(db_dsn, BRIDGE_TARGET_STORAGE="influx")
    assert bad.returncode == 2
    assert "BRIDGE_TARGET_STORAGE" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    if not _timescale_installed(db_dsn):
        forced = _cli(db_dsn, BRIDGE_TARGET_STORAGE="timescale")
        assert forced.returncode == 1
        assert forced.stderr.strip() == (
            "bridge-migrate: BRIDGE_TARGET_STORAGE=timescale, but the timescaledb extension"
            " is not installed on the target server"
        )
    plain = _cli(db_dsn, BRIDGE_TARGET_STORAGE="Plain")
    assert plain.returncode == 0, plain.stderr
    assert "applied target 0001_audit_logs_ts (plain)" in plain.stdout
    # migrated for plain storage: asking for TimescaleDB now is refused, auto keeps plain
    again = _cli(db_dsn, BRIDGE_TARGET_STORAGE="timescale")
    assert again.returncode == 1
    assert "migrated for plain storage" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert _cli(db_dsn).returncode == 0
    check = subprocess.run(
        [sys.executable, "-m", "bridge_common", "--check"],
        env={"PATH": "/usr/bin:/bin", "BRIDGE_SOURCE_DSN": db_dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "up to date" in check.stdout


def _dying(scope: str, no_transaction: bool) -> list[migrate.Migration]:
    head = "-- bridge:no-transaction\n" if no_transaction else ""
    sql = (
        head + "CREATE TABLE before_death (x int);\nSELECT pg_terminate_backend(pg_backend_pid());"
    )
    return [migrate.Migration(scope, "9999_dies", "", sql)]  # type: ignore[arg-type]


@pytest.mark.parametrize("no_transaction", [False, True], ids=["transaction", "autocommit"])
def test_a_session_that_dies_mid_migration_reports_why(
    pg_admin_dsn: str, monkeypatch: pytest.MonkeyPatch, no_transaction: bool
) -> None:
    """The server ends the session mid-migration (as `CREATE EXTENSION timescaledb` does
    when the library is not preloaded): the error names the migration and the server's
    reason, not the unlock that cannot run on a closed connection."""
    name = infra.unique_name("bt", "dies")
    dsn = infra.create_database(pg_admin_dsn, name)
    try:
        monkeypatch.setattr(migrate, "load_migrations", lambda scope: _dying(scope, no_transaction))
        with pytest.raises(MigrationError) as err:
            asyncio.run(migrate.apply(dsn, "target"))
        text = str(err.value)
        assert text.startswith("target migration 9999_dies failed: ")
        assert "terminating connection" in text, text
        assert "closed" not in text
        # the lock went with the session: the next run is not blocked
        with psycopg.connect(dsn, autocommit=True) as conn:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (migrate._LOCK_KEY,)).fetchone()
            assert got == (True,)
            conn.execute("SELECT pg_advisory_unlock(%s)", (migrate._LOCK_KEY,))
            recorded = conn.execute(
                "SELECT count(*) FROM bridge.schema_migrations WHERE version = '9999_dies'"
            ).fetchone()
            assert recorded == (0,)
    finally:
        infra.drop_database(pg_admin_dsn, name)


def test_an_error_with_the_session_alive_still_releases_the_lock(
    db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = [migrate.Migration("target", "9998_bad", "", "SELECT * FROM no_such_table")]
    monkeypatch.setattr(migrate, "load_migrations", lambda scope: bad)

    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as watcher:
            with pytest.raises(MigrationError, match="9998_bad failed: relation"):
                await migrate.apply(db_dsn, "target")
            cur = await watcher.execute("SELECT pg_try_advisory_lock(%s)", (migrate._LOCK_KEY,))
            assert await cur.fetchone() == (True,)
            await watcher.execute("SELECT pg_advisory_unlock(%s)", (migrate._LOCK_KEY,))

    asyncio.run(go())
