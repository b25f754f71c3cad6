"""`bridge-demo` / `just demo`: realistic traffic for the source database — intents moving
through their statuses, the audit logs an application writes alongside them (info,
warnings, errors), failures and their corrections (`intent.corrected`).

Delivery: every step is one short transaction (an intent change together with its audit
log), so a crash leaves either the whole step or none of it, and each committed step
becomes events through the outbox. The
database comes from `BRIDGE_SOURCE_DSN` (or `POSTGRES_DSN` / `DATABASE_URL`), else from the
stack `just up` is running (`<data>/stack.env`).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .envfile import read_env_file

rng = random.Random()  # noqa: S311 - demo data, not crypto

TITLES = (
    "Refund order {n}",
    "Provision workspace {n}",
    "Renew certificate {n}",
    "Sync customer {n} to CRM",
    "Rotate API key {n}",
    "Ship parcel {n}",
    "Approve invoice {n}",
    "Resize cluster {n}",
    "Migrate mailbox {n}",
    "Reconcile ledger batch {n}",
)
ACTORS = ("alice", "bob", "carol", "dave", "svc-billing", "svc-scheduler", "svc-sync", "ops-bot")
#: background audit events and how often each occurs relative to the others
NOISE = (
    ("user.login", "info", {"method": "sso"}, 30),
    ("user.login_failed", "warning", {"reason": "bad password"}, 8),
    ("webhook.delivered", "debug", {"status": 200}, 25),
    ("webhook.timeout", "error", {"timeout_ms": 5000}, 5),
    ("payment.retry", "warning", {"attempt": 2}, 8),
    ("db.replica_lag", "critical", {"lag_seconds": 42}, 1),
    ("config.changed", "info", {"key": "feature.flags"}, 4),
)
FAIL_REASONS = (
    "upstream timeout",
    "validation failed: amount < 0",
    "quota exceeded",
    "card declined",
    "dependency unavailable",
)
MAX_TRACKED = 500  # intents kept in memory to advance later


@dataclass
class Counts:
    intents: int = 0
    updates: int = 0
    audit_logs: int = 0
    errors: int = 0
    corrections: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        return (
            f"demo: {self.intents} intents, {self.updates} status changes, "
            f"{self.audit_logs} audit logs ({self.errors} errors, "
            f"{self.corrections} corrections) in {time.monotonic() - self.started:.0f}s"
        )


class Traffic:
    """One step at a time; `open_intents` remembers what can still move forward."""

    def __init__(self, conn: psycopg.Connection[Any], counts: Counts) -> None:
        self.conn = conn
        self.counts = counts
        self.pending: deque[uuid.UUID] = deque(maxlen=MAX_TRACKED)
        self.processing: deque[uuid.UUID] = deque(maxlen=MAX_TRACKED)
        self.failed: deque[uuid.UUID] = deque(maxlen=MAX_TRACKED)

    def audit(
        self, intent: uuid.UUID | None, action: str, severity: str, details: dict[str, Any]
    ) -> None:
        self.conn.execute(
            "INSERT INTO audit_logs (intent_id, actor, action, severity, details)"
            " VALUES (%s, %s, %s, %s, %s)",
            (intent, rng.choice(ACTORS), action, severity, Jsonb(details)),
        )
        self.counts.audit_logs += 1
        if severity in ("error", "critical"):
            self.counts.errors += 1

    def set_status(self, intent: uuid.UUID, status: str, extra: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE intents SET status = %s, payload = payload || %s WHERE id = %s",
            (status, Jsonb(extra), intent),
        )
        self.counts.updates += 1

    def create(self) -> None:
        n = rng.randint(1000, 99999)
        title = rng.choice(TITLES).format(n=n)
        payload = {
            "amount": round(rng.uniform(5, 5000), 2),
            "currency": "EUR",
            "priority": rng.choice(["low", "normal", "high"]),
            "ref": f"R-{n}",
        }
        row = self.conn.execute(
            "INSERT INTO intents (title, status, payload) VALUES (%s, 'pending', %s) RETURNING id",
            (title, Jsonb(payload)),
        ).fetchone()
        assert row is not None
        self.audit(row[0], "intent.created", "info", {"title": title})
        self.pending.append(row[0])
        self.counts.intents += 1

    def start_one(self) -> bool:
        if not self.pending:
            return False
        intent = self.pending.popleft()
        self.set_status(intent, "processing", {"worker": f"w{rng.randint(1, 8)}"})
        self.audit(intent, "intent.started", "debug", {})
        self.processing.append(intent)
        return True

    def finish_one(self) -> bool:
        if not self.processing:
            return False
        intent = self.processing.popleft()
        if rng.random() < 0.2:
            reason = rng.choice(FAIL_REASONS)
            self.set_status(intent, "failed", {"error": reason})
            self.audit(intent, "intent.failed", "error", {"error": reason})
            self.failed.append(intent)
        else:
            self.set_status(intent, "completed", {"duration_ms": rng.randint(40, 9000)})
            self.audit(intent, "intent.completed", "info", {})
        return True

    def correct_one(self) -> bool:
        if not self.failed:
            return False
        intent = self.failed.popleft()
        if rng.random() < 0.3:
            # some failures are abandoned: they stay failed, as they do in real systems
            self.audit(intent, "intent.abandoned", "warning", {"reason": "no fix available"})
            return True
        fix = rng.choice(["amount", "currency", "recipient", "schedule"])
        self.set_status(intent, "corrected", {"corrected_field": fix})
        self.audit(
            intent, "intent.corrected", "warning", {"field": fix, "by": rng.choice(ACTORS[:4])}
        )
        self.counts.corrections += 1
        return True

    def noise(self) -> None:
        ((action, severity, details, _),) = rng.choices(NOISE, weights=[n[3] for n in NOISE])
        self.audit(None, action, severity, details)

    def step(self) -> None:
        """One transaction: the next plausible thing an application would do."""
        with self.conn.transaction():
            roll = rng.random()
            if roll < 0.30 or not (self.pending or self.processing or self.failed):
                self.create()
            elif roll < 0.50 and self.start_one():
                pass
            elif roll < 0.75 and self.finish_one():
                pass
            elif roll < 0.85 and self.correct_one():
                pass
            else:
                self.noise()


def resolve_dsn(args: argparse.Namespace) -> str:
    import os

    if args.dsn:
        return str(args.dsn)
    for var in ("BRIDGE_SOURCE_DSN", "POSTGRES_DSN", "DATABASE_URL"):
        if os.environ.get(var):
            return os.environ[var]
    stack_env = read_env_file(Path(args.data_dir) / "stack.env")
    if stack_env.get("BRIDGE_SOURCE_DSN"):
        return stack_env["BRIDGE_SOURCE_DSN"]
    for line in read_env_file(Path(".env")).items():
        if line[0] in ("BRIDGE_SOURCE_DSN", "POSTGRES_DSN", "DATABASE_URL"):
            return line[1]
    return "postgresql://localhost/bridge"


def run(dsn: str, rate: float, count: int | None, stop: threading.Event) -> Counts:
    counts = Counts()
    interval = 1.0 / rate
    last_report = time.monotonic()
    delay = 0.5
    done = 0
    while not stop.is_set() and (count is None or done < count):
        try:
            with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
                traffic = Traffic(conn, counts)
                delay = 0.5
                while not stop.is_set() and (count is None or done < count):
                    traffic.step()
                    done += 1
                    if time.monotonic() - last_report >= 10:
                        print(counts.line(), flush=True)
                        last_report = time.monotonic()
                    # jitter so the event stream looks like traffic, not a metronome
                    stop.wait(rng.uniform(0.3, 1.7) * interval)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"demo: database error ({first}); retrying in {delay:.1f}s", flush=True)
            stop.wait(delay)
            delay = min(delay * 2, 10.0)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bridge-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=3.0, help="changes per second (default 3)")
    parser.add_argument("--count", type=int, help="stop after this many changes")
    parser.add_argument("--dsn", help="source database (default: see above)")
    parser.add_argument("--data-dir", default=".data", help="where `just up` keeps its data")
    parser.add_argument("--seed", type=int, help="repeatable traffic")
    args = parser.parse_args(argv)
    if args.seed is not None:
        rng.seed(args.seed)
    if not 0 < args.rate <= 1000:
        parser.error("--rate must be in (0, 1000]")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dsn = resolve_dsn(args)
    print(f"demo: writing ~{args.rate:g} changes/s", flush=True)
    counts = run(dsn, args.rate, args.count, stop)
    print(counts.line(), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
