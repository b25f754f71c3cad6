"""`bridge-migrate`: versioned SQL for the source and the target database.

Migrations live in `sql/source/` and `sql/target/` as `NNNN_name.sql`. A file may come in
variants chosen by what the database offers: `NNNN_name.timescale.sql` runs where the
`timescaledb` extension is available, `NNNN_name.plain.sql` where it is not; both record
the same version. Each migration runs in its own transaction under an advisory lock and
is recorded in `bridge.schema_migrations` (scope, version) — applying twice is a no-op.
A file whose first line is `-- bridge:no-transaction` runs statement by statement in
autocommit (TimescaleDB continuous aggregates cannot be created in a transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import psycopg

from .errors import MigrationError
from .settings import BridgeSettings, load_settings

Scope = Literal["source", "target"]
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


async def timescale_available(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return await cur.fetchone() is not None


async def _applied(conn: psycopg.AsyncConnection[Any], scope: Scope) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT version, checksum FROM bridge.schema_migrations WHERE scope = %s", (scope,)
    )
    return {v: c for v, c in await cur.fetchall()}


async def pending(dsn: str, scope: Scope) -> list[Migration]:
    """Migrations of `scope` not yet applied to `dsn` (read-only)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ts = await timescale_available(conn)
        cur = await conn.execute("SELECT to_regclass('bridge.schema_migrations')")
        row = await cur.fetchone()
        done = await _applied(conn, scope) if row and row[0] else {}
        return [m for m in select_variants(load_migrations(scope), ts) if m.version not in done]


async def apply(dsn: str, scope: Scope, *, out: Any = None) -> list[Migration]:
    """Apply the pending migrations of `scope` to `dsn`; returns what was applied."""
    applied: list[Migration] = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            await conn.execute(_TRACKING_DDL)
            ts = await timescale_available(conn)
            done = await _applied(conn, scope)
            for m in select_variants(load_migrations(scope), ts):
                if m.version in done:
                    continue
                try:
                    if m.no_transaction:
                        for stmt in split_statements(m.sql):
                            await conn.execute(stmt.encode())
                        await conn.execute(
                            "INSERT INTO bridge.schema_migrations (scope, version, variant,"
                            " checksum) VALUES (%s, %s, %s, %s)",
                            (scope, m.version, m.variant, m.checksum),
                        )
                    else:
                        async with conn.transaction():
                            await conn.execute(m.sql.encode())
                            await conn.execute(
                                "INSERT INTO bridge.schema_migrations (scope, version, variant,"
                                " checksum) VALUES (%s, %s, %s, %s)",
                                (scope, m.version, m.variant, m.checksum),
                            )
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"{scope} migration {m.version}"
                        f"{'.' + m.variant if m.variant else ''} failed: "
                        f"{str(exc).strip().splitlines()[0]}"
                    ) from exc
                applied.append(m)
                if out is not None:
                    label = f"{m.version}{' (' + m.variant + ')' if m.variant else ''}"
                    print(f"applied {scope} {label}", file=out)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
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


async def migrate_all(settings: BridgeSettings, *, out: Any = None) -> list[Migration]:
    """Source migrations on the source DSN, target migrations on the target DSN."""
    applied = await apply(settings.source_dsn, "source", out=out)
    applied += await apply(settings.effective_target_dsn, "target", out=out)
    return applied


class MigrateSettings(BridgeSettings):
    service_name = "migrate"


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
        todo += await pending(settings.effective_target_dsn, "target")
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
