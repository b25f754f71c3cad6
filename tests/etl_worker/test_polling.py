"""Polling mode: every row exactly once, out-of-order commits, kill -9 and restart."""

from __future__ import annotations

import signal
import threading

import psycopg
import redis
from bridge_common.channels import Channels

from tests.etl_worker.audit import (
    dead_letters,
    insert_rows,
    rollup_mismatches,
    source_sum,
    target_sum,
    wait_converged,
    wait_for,
)


def run_once(spawn, env, *args: str, timeout: float = 60) -> str:
    proc = spawn("etl", env, args=list(args), wait_ready=False)
    assert proc.proc.wait(timeout) == 0, proc.logs()[-3000:]
    return proc.logs()


def test_polling_once_moves_every_row_exactly_once(
    spawn, etl_env, clean, redis_url, namespace, storage
) -> None:
    insert_rows(clean, 2500, hours=40)
    with psycopg.connect(clean, autocommit=True) as conn:  # id 2501: cannot be stored
        conn.execute("INSERT INTO audit_logs (actor, action, details) VALUES ('b', 'x', '[1]')")
    insert_rows(clean, 2499, hours=40, start=2501)
    logs = run_once(spawn, etl_env, "--mode", "polling", "--once", "--batch-size", "700")
    assert f'"path": "{storage}"' in logs and '"event": "etl.path"' in logs
    assert target_sum(clean) == source_sum(clean, "WHERE id <> 2501")
    assert rollup_mismatches(clean) == []
    [letter] = dead_letters(redis_url, namespace)
    assert letter["source_id"] == "2501" and letter["origin"] == "polling"
    assert "details must be a JSON object" in letter["reason"]
    # a replay (fresh state, same rows) inserts nothing and counts nothing twice
    with psycopg.connect(clean, autocommit=True) as conn:
        conn.execute("TRUNCATE bridge.etl_state")
    run_once(spawn, etl_env, "--mode", "polling", "--once")
    assert target_sum(clean) == source_sum(clean, "WHERE id <> 2501")
    assert rollup_mismatches(clean) == []
    assert len(dead_letters(redis_url, namespace)) == 1  # the re-scan did not repeat it
    with psycopg.connect(clean) as conn:
        (wm,) = conn.execute("SELECT watermark FROM bridge.etl_state").fetchone()
    assert wm == 5000


def test_late_commit_below_the_watermark_is_not_skipped(spawn, etl_env, clean) -> None:
    """ids 2..121 commit after 123 was read; a rolled-back id leaves a gap that settles."""
    env = {**etl_env, "BRIDGE_ETL_MODE": "polling", "BRIDGE_ETL_BATCH_SIZE": "50"}
    proc = spawn("etl", env)
    insert_rows(clean, 1)  # id 1
    slow = psycopg.connect(clean)
    slow.execute(  # ids 2..121, re-read later in batches of 50
        "INSERT INTO audit_logs (actor, action) SELECT 'slow', 'late.commit'"
        " FROM generate_series(1, 120)"
    )
    aborted = psycopg.connect(clean)
    aborted.execute("INSERT INTO audit_logs (actor, action) VALUES ('gone', 'x')")  # 122
    insert_rows(clean, 2, start=10)  # ids 123, 124
    wait_for(lambda: target_sum(clean)[0] == 3, 20, "rows 1, 123, 124")
    aborted.rollback()
    aborted.close()
    # the worker must hold its watermark below the open gap of ids 2..121
    with psycopg.connect(clean) as conn:
        (wm,) = conn.execute("SELECT watermark FROM bridge.etl_state").fetchone()
    assert wm < 2
    slow.commit()
    slow.close()
    wait_for(lambda: target_sum(clean) == source_sum(clean), 20, "late rows 2..121 loaded")

    def settled() -> bool:
        with psycopg.connect(clean) as conn:
            return conn.execute("SELECT watermark FROM bridge.etl_state").fetchone()[0] == 124

    wait_for(settled, 20, "watermark past the rolled-back id 122")
    assert rollup_mismatches(clean) == []
    assert proc.stop() == 0


def test_concurrent_writers_with_random_commit_order(spawn, etl_env, clean) -> None:
    """Many writers commit out of id order while the worker polls: nothing is skipped."""
    proc = spawn("etl", {**etl_env, "BRIDGE_ETL_MODE": "polling", "BRIDGE_ETL_BATCH_SIZE": "50"})
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with psycopg.connect(clean) as conn:
                for i in range(40):
                    conn.execute(
                        "INSERT INTO audit_logs (actor, action) VALUES (%s, 'w')", (f"w{k}-{i}",)
                    )
                    conn.execute("SELECT pg_sleep(0.002 * ((%s + %s) %% 5))", (k, i))
                    conn.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    wait_converged(clean)
    assert target_sum(clean) == source_sum(clean)
    assert rollup_mismatches(clean) == []
    assert proc.stop() == 0


def test_kill_9_mid_batch_and_restart(spawn, etl_env, clean, redis_url, namespace) -> None:
    insert_rows(clean, 20_000, hours=20)
    env = {**etl_env, "BRIDGE_ETL_MODE": "polling", "BRIDGE_ETL_BATCH_SIZE": "200"}
    proc = spawn("etl", env)
    wait_for(lambda: target_sum(clean)[0] >= 1000, 30, "first batches")
    proc.kill()
    loaded = target_sum(clean)[0]
    assert 0 < loaded < 20_000, "the kill must land mid-run"
    insert_rows(clean, 1000, start=20_000)
    proc2 = spawn("etl", env)
    want = wait_converged(clean, 60)
    assert target_sum(clean) == want
    assert rollup_mismatches(clean) == []
    r = redis.Redis.from_url(redis_url)
    assert r.xlen(Channels(namespace).etl_dead_letter) == 0
    r.close()
    assert proc2.stop(signal.SIGTERM) == 0
