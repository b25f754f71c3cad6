"""`just demo`: realistic traffic (intents through their statuses, audit logs of every
severity, failures and corrections), one transaction per step — so a SIGKILL mid-stream
leaves only whole steps behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psycopg

DEMO = [sys.executable, "-m", "bridge_devstack.demo"]


def scalar(dsn: str, query: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def check_whole_steps(dsn: str) -> None:
    """Every intent has its creation log and every state change its log, and vice versa."""

    def has_log(action: str) -> str:
        return (
            "EXISTS (SELECT 1 FROM audit_logs a"
            f" WHERE a.intent_id = i.id AND a.action = '{action}')"
        )

    orphans = {
        "intent without intent.created": "SELECT count(*) FROM intents i WHERE NOT "
        + has_log("intent.created"),
        "failed without intent.failed": "SELECT count(*) FROM intents i WHERE status = 'failed' "
        "AND NOT " + has_log("intent.failed"),
        "corrected without intent.corrected": "SELECT count(*) FROM intents i "
        "WHERE status = 'corrected' AND NOT " + has_log("intent.corrected"),
        "intent.created without intent": "SELECT count(*) FROM audit_logs a WHERE a.action = "
        "'intent.created' AND NOT EXISTS (SELECT 1 FROM intents i WHERE i.id = a.intent_id)",
        "intent.corrected on an intent not corrected": "SELECT count(*) FROM audit_logs a JOIN "
        "intents i ON i.id = a.intent_id WHERE a.action = 'intent.corrected' "
        "AND i.status <> 'corrected'",
    }
    found = {what: scalar(dsn, q) for what, q in orphans.items()}
    assert found == dict.fromkeys(orphans, 0)


def test_demo_writes_realistic_traffic(migrated_dsn: str) -> None:
    before = scalar(migrated_dsn, "SELECT count(*) FROM intents")
    result = subprocess.run(
        [*DEMO, "--dsn", migrated_dsn, "--rate", "1000", "--count", "300", "--seed", "7"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(migrated_dsn) as conn:
        statuses = {r[0] for r in conn.execute("SELECT DISTINCT status FROM intents")}
        severities = {r[0] for r in conn.execute("SELECT DISTINCT severity FROM audit_logs")}
        actions = {r[0] for r in conn.execute("SELECT DISTINCT action FROM audit_logs")}
    assert scalar(migrated_dsn, "SELECT count(*) FROM intents") > before
    assert {"corrected", "completed"} <= statuses
    assert {"info", "warning", "error"} <= severities
    assert {"intent.created", "intent.failed", "intent.corrected"} <= actions
    check_whole_steps(migrated_dsn)
    assert "corrections" in result.stdout


def test_sigkill_mid_stream_leaves_only_whole_steps(migrated_dsn: str) -> None:
    start = scalar(migrated_dsn, "SELECT count(*) FROM audit_logs")
    proc = subprocess.Popen(
        [*DEMO, "--dsn", migrated_dsn, "--rate", "400"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while scalar(migrated_dsn, "SELECT count(*) FROM audit_logs") < start + 150:
            assert time.monotonic() < deadline, "demo wrote too little"
            assert proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    check_whole_steps(migrated_dsn)


def test_sigterm_stops_the_demo_cleanly(migrated_dsn: str) -> None:
    proc = subprocess.Popen(
        [*DEMO, "--dsn", migrated_dsn, "--rate", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("demo: writing")  # handlers are installed
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out.strip().splitlines()[-1].startswith("demo: ")
