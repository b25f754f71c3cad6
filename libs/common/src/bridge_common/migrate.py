"""`bridge-migrate`: versioned SQL for the source and the target database.

Migrations live in `sql/source/` and `sql/target/` as `NNNN_name.sql`. A file may come in
variants: `NNNN_name.timescale.sql` for TimescaleDB storage, `NNNN_name.plain.sql` for
partitioned PostgreSQL; both record the same version. `BRIDGE_TARGET_STORAGE` picks the
variant (`choose_variant`): `auto` takes TimescaleDB only where it can actually be used —
the extension is created already, or installed and preloaded (`shared_preload_libraries`);
installed but not preloaded, `CREATE EXTENSION` would end the session with a FATAL. Once a
database holds a variant, later migrations keep to it. Each migration runs in its own
transaction under an advisory lock and is recorded in `bridge.schema_migrations`
(scope, version) — applying twice is a no-op. A failure is reported as itself: releasing
the lock afterwards is best effort and never replaces the error.
A file whose first line is `-- bridge:no-transaction` runs statement by statement in
autocommit (TimescaleDB continuous aggregates cannot be created in a transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import psycopg
from pydantic import Field, field_validator

from .errors import MigrationError
from .settings import BridgeSettings, load_settings

Scope = Literal["source", "target"]
#: `BRIDGE_TARGET_STORAGE`: what the time series is stored in
Storage = Literal["auto", "timescale", "plain"]
Variant = Literal["timescale", "plain"]
_LOCK_KEY = 0x6272_6964  # "brid": serialises concurrent bridge-migrate runs

_TRACKING_DDL = """
CREATE SCHEMA IF NOT EXISTS bridge;
CREATE TABLE IF NOT EXISTS bridge.schema_migrations (
    scope      text NOT NULL,
    version    text NOT NULL,
    variant    text NOT NULL DEFAULT '',
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, version)
);
"""
_RECORD = (
    "INSERT INTO bridge.schema_migrations (scope, version, variant, checksum)"
    " VALUES (%s, %s, %s, %s)"
)


@dataclass(frozen=True)
class Migration:
    scope: Scope
    version: str  # e.g. "0002_outbox"
    variant: str  # "", "timescale" or "plain"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]

    @property
    def no_transaction(self) -> bool:
        return self.sql.lstrip().startswith("-- bridge:no-transaction")


def load_migrations(scope: Scope) -> list[Migration]:
    """Every migration file of a scope, sorted by version (all variants)."""
    folder = resources.files("bridge_common") / "sql" / scope
    found: list[Migration] = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.endswith(".sql"):
            continue
        stem = name[: -len(".sql")]
        variant = ""
        for v in ("timescale", "plain"):
            if stem.endswith("." + v):
                variant, stem = v, stem[: -len(v) - 1]
        found.append(Migration(scope, stem, variant, entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: (m.version, m.variant))


def select_variants(migrations: list[Migration], timescale: bool) -> list[Migration]:
    wanted = "timescale" if timescale else "plain"
    return [m for m in migrations if m.variant in ("", wanted)]


def split_statements(text: str) -> list[str]:
    """Split SQL on top-level `;`, respecting quotes, dollar quotes and comments."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "-" and text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            buf.append(text[i:j])
            i = j
        elif c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            buf.append(text[i:j])
            i = j
        elif c in ("'", '"'):
            j = i + 1
            while j < n:
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            buf.append(text[i : j + 1])
            i = j + 1
        elif c == "$":
            j = text.find("$", i + 1)
            tag = text[i : j + 1] if j > 0 else ""
            if tag and all(ch.isalnum() or ch == "_" for ch in tag[1:-1]):
                end = text.find(tag, j + 1)
                end = n if end < 0 else end + len(tag)
                buf.append(text[i:end])
                i = end
            else:
                buf.append(c)
                i += 1
        elif c == ";":
            stmt = "".join(buf).strip()
            if _has_code(stmt):
                out.append(stmt)
            buf = []
            i += 1
        else:
            buf.append(c)
            i += 1
    stmt = "".join(buf).strip()
    if _has_code(stmt):
        out.append(stmt)
    return out


def _has_code(stmt: str) -> bool:
    lines = [ln for ln in stmt.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    return bool(lines)


@dataclass(frozen=True, slots=True)
class TimescaleState:
    """What a database offers of TimescaleDB."""

    installed: bool  # in pg_available_extensions
    created: bool  # CREATE EXTENSION done in this database
    preloaded: bool  # the library is loaded at server start (shared_preload_libraries)

    @property
    def usable(self) -> bool:
        return self.created or (self.installed and self.preloaded)


def preload_names(setting: str) -> set[str]:
    """Library names in a `shared_preload_libraries` value (`'$libdir/timescaledb.so'` →
    `timescaledb`)."""
    names = set()
    for part in setting.split(","):
        name = part.strip().strip('"').strip()
        name = name.rsplit("/", 1)[-1]
        name = name.removesuffix(".so")
        if name:
            names.add(name)
    return names


async def timescale_state(conn: psycopg.AsyncConnection[Any]) -> TimescaleState:
    # A loaded library registers its `timescaledb.*` settings in pg_settings (unloaded,
    # they are placeholders, which pg_settings does not list).
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),"
        " current_setting('shared_preload_libraries'),"
        " EXISTS (SELECT 1 FROM pg_settings WHERE name LIKE 'timescaledb.%%')"
    )
    row = await cur.fetchone()
    assert row is not None
    installed, created, preload, loaded = row
    preloaded = "timescaledb" in preload_names(str(preload or "")) or bool(loaded)
    return TimescaleState(bool(installed), bool(created), preloaded)


def choose_variant(storage: Storage, state: TimescaleState, recorded: str | None) -> Variant:
    """The variant to apply, or `MigrationError` with one line saying why none can be.

    `recorded` is the variant the database was migrated with before (None if none yet).
    """
    if recorded in ("timescale", "plain"):
        if storage != "auto" and storage != recorded:
            raise MigrationError(
                f"BRIDGE_TARGET_STORAGE={storage}, but the target database was migrated for"
                f" {recorded} storage; a different storage needs a new target database"
            )
        return "timescale" if recorded == "timescale" else "plain"
    if storage == "plain":
        return "plain"
    if state.usable:
        return "timescale"
    if storage == "auto":
        return "plain"
    if not state.installed:
        raise MigrationError(
            "BRIDGE_TARGET_STORAGE=timescale, but the timescaledb extension is not installed"
            " on the target server"
        )
    raise MigrationError(
        "BRIDGE_TARGET_STORAGE=timescale, but timescaledb is installed and not preloaded:"
        " add it to shared_preload_libraries on the target server and restart PostgreSQL"
    )


async def _recorded_variant(conn: psycopg.AsyncConnection[Any], scope: Scope) -> str | None:
    cur = await conn.execute("SELECT to_regclass('bridge.schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute(
        "SELECT variant FROM bridge.schema_migrations WHERE scope = %s AND variant <> ''"
        " ORDER BY version DESC LIMIT 1",
        (scope,),
    )
    found = await cur.fetchone()
    return None if found is None else str(found[0])


async def _plan(
    conn: psycopg.AsyncConnection[Any], scope: Scope, storage: Storage
) -> list[Migration]:
    """The scope's migrations in the variant this database gets."""
    migrations = load_migrations(scope)
    if not any(m.variant for m in migrations):
        return migrations
    state = await timescale_state(conn)
    variant = choose_variant(storage, state, await _recorded_variant(conn, scope))
    return select_variants(migrations, variant == "timescale")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _applied(conn: psycopg.AsyncConnection[Any], scope: Scope) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT version, checksum FROM bridge.schema_migrations WHERE scope = %s", (scope,)
    )
    return {v: c for v, c in await cur.fetchall()}


async def _connect(dsn: str, scope: Scope) -> psycopg.AsyncConnection[Any]:
    try:
        # no server-side prepared statements: a migration runs each statement a few times
        # at most, and poolers or single-session servers (PgBouncer in transaction mode,
        # PGlite) do not keep them apart between sessions
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to the {scope} database: {_first_line(exc)}") from exc


async def pending(dsn: str, scope: Scope, *, storage: Storage = "auto") -> list[Migration]:
    """Migrations of `scope` not yet applied to `dsn` (read-only)."""
    async with await _connect(dsn, scope) as conn:
        try:
            planned = await _plan(conn, scope, storage)
            cur = await conn.execute("SELECT to_regclass('bridge.schema_migrations')")
            row = await cur.fetchone()
            done = await _applied(conn, scope) if row and row[0] else {}
        except psycopg.Error as exc:
            raise MigrationError(f"{scope} database: {_first_line(exc)}") from exc
        return [m for m in planned if m.version not in done]


async def apply(
    dsn: str, scope: Scope, *, out: Any = None, storage: Storage = "auto"
) -> list[Migration]:
    """Apply the pending migrations of `scope` to `dsn`; returns what was applied."""
    async with await _connect(dsn, scope) as conn:
        try:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        except psycopg.Error as exc:
            raise MigrationError(f"{scope} database: {_first_line(exc)}") from exc
        try:
            applied = await _apply_locked(conn, scope, out, storage)
        except BaseException:
            # The error in flight is the one to report. If the session died with it, the
            # server released the lock already; if not, release it, but never let a
            # failing unlock stand in for the real error.
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
            raise
        try:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
        except psycopg.Error as exc:
            raise MigrationError(f"{scope} database: {_first_line(exc)}") from exc
    return applied


async def _apply_locked(
    conn: psycopg.AsyncConnection[Any], scope: Scope, out: Any, storage: Storage
) -> list[Migration]:
    applied: list[Migration] = []
    try:
        await conn.execute(_TRACKING_DDL)
        planned = await _plan(conn, scope, storage)
        done = await _applied(conn, scope)
    except psycopg.Error as exc:
        raise MigrationError(f"{scope} database: {_first_line(exc)}") from exc
    for m in planned:
        if m.version in done:
            continue
        try:
            if m.no_transaction:
                for stmt in split_statements(m.sql):
                    await conn.execute(stmt.encode())
                await conn.execute(_RECORD, (scope, m.version, m.variant, m.checksum))
            else:
                async with conn.transaction():
                    await conn.execute(m.sql.encode())
                    await conn.execute(_RECORD, (scope, m.version, m.variant, m.checksum))
        except psycopg.Error as exc:
            raise MigrationError(
                f"{scope} migration {m.version}{'.' + m.variant if m.variant else ''}"
                f" failed: {_first_line(exc)}"
            ) from exc
        applied.append(m)
        if out is not None:
            label = f"{m.version}{' (' + m.variant + ')' if m.variant else ''}"
            print(f"applied {scope} {label}", file=out)
    return applied


async def watch(dsn: str, table: str, topic: str | None = None) -> str:
    """Install the capture triggers on `schema.table`; returns its topic."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        try:
            cur = await conn.execute("SELECT bridge.watch(%s::regclass, %s)", (table, topic))
        except psycopg.Error as exc:
            raise MigrationError(
                f"cannot watch {table}: {str(exc).strip().splitlines()[0]}"
            ) from exc
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


async def unwatch(dsn: str, table: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        try:
            await conn.execute("SELECT bridge.unwatch(%s::regclass)", (table,))
        except psycopg.Error as exc:
            raise MigrationError(
                f"cannot unwatch {table}: {str(exc).strip().splitlines()[0]}"
            ) from exc


async def migrate_all(settings: MigrateSettings, *, out: Any = None) -> list[Migration]:
    """Source migrations on the source DSN, target migrations on the target DSN."""
    applied = await apply(settings.source_dsn, "source", out=out)
    applied += await apply(
        settings.effective_target_dsn, "target", out=out, storage=settings.target_storage
    )
    return applied


class MigrateSettings(BridgeSettings):
    service_name = "migrate"

    #: `auto`: TimescaleDB where it can be used (created, or installed and preloaded),
    #: else partitioned PostgreSQL; `timescale` fails with one line where it cannot be had
    target_storage: Storage = Field(default="auto", validation_alias="BRIDGE_TARGET_STORAGE")

    @field_validator("target_storage", mode="before")
    @classmethod
    def _lower_storage(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bridge-migrate",
        description="Apply Bridge Lite's schema to the source and target databases.",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if anything is pending")
    p.add_argument(
        "--watch",
        action="append",
        default=[],
        metavar="SCHEMA.TABLE",
        help="install the capture trigger on a table (its topic is the table's name)",
    )
    p.add_argument("--topic", help="topic for a single --watch (default: the table's name)")
    p.add_argument("--unwatch", action="append", default=[], metavar="SCHEMA.TABLE")
    p.add_argument("--source-dsn", help="overrides BRIDGE_SOURCE_DSN")
    p.add_argument("--target-dsn", help="overrides BRIDGE_TARGET_DSN")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    settings = load_settings(
        MigrateSettings, source_dsn=args.source_dsn, target_dsn=args.target_dsn
    )
    if args.check:
        todo = await pending(settings.source_dsn, "source")
        todo += await pending(
            settings.effective_target_dsn, "target", storage=settings.target_storage
        )
        for m in todo:
            print(f"pending {m.scope} {m.version}")
        if not todo:
            print("up to date")
        return 1 if todo else 0
    applied = await migrate_all(settings, out=sys.stdout)
    if not applied:
        print("up to date")
    if args.topic and len(args.watch) != 1:
        raise MigrationError("--topic goes with exactly one --watch")
    for table in args.watch:
        topic = await watch(settings.source_dsn, table, args.topic)
        print(f"watching {table} on topic {topic}")
    for table in args.unwatch:
        await unwatch(settings.source_dsn, table)
        print(f"no longer watching {table}")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    try:
        code = asyncio.run(_main(args))
    except MigrationError as exc:
        print(f"bridge-migrate: {exc}", file=sys.stderr)
        code = 1
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"bridge-migrate: cannot connect: {first}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
