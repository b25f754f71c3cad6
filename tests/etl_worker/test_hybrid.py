"""Hybrid mode: polling repairs a trimmed or lost stream; several workers never duplicate."""

from __future__ import annotations

import time

import orjson
import redis
from bridge_common.channels import Channels

from tests.etl_worker.audit import (
    dead_letters,
    insert_rows,
    publish_rows,
    rollup_mismatches,
    rows_inserted,
    source_sum,
    target_sum,
    wait_converged,
    wait_for,
)


def test_hybrid_converges_when_the_stream_is_trimmed_mid_run(
    spawn, etl_env, clean, redis_url, namespace
) -> None:
    insert_rows(clean, 4000)
    publish_rows(redis_url, namespace, clean, "WHERE id <= 2000")
    env = {
        **etl_env,
        "BRIDGE_ETL_MODE": "hybrid",
        "BRIDGE_ETL_BATCH_SIZE": "200",
        "BRIDGE_ETL_POLL_INTERVAL": "0.5",
    }
    proc = spawn("etl", env)
    r = redis.Redis.from_url(redis_url)
    stream = Channels(namespace).stream("audit_logs")
    r.xtrim(stream, maxlen=0)  # entries vanish before (some of) them were read
    publish_rows(redis_url, namespace, clean, "WHERE id BETWEEN 2001 AND 3000")
    r.xtrim(stream, maxlen=100)
    # rows 3001..4000 never reach the stream at all
    insert_rows(clean, 500, start=4000)  # and more arrive while it runs
    wait_converged(clean, 60)
    assert target_sum(clean) == source_sum(clean)
    assert rollup_mismatches(clean) == []
    r.close()
    assert proc.stop() == 0


def test_two_hybrid_workers_at_once_no_duplicates(
    spawn, etl_env, clean, redis_url, namespace, storage
) -> None:
    env = {**etl_env, "BRIDGE_ETL_MODE": "hybrid", "BRIDGE_ETL_BATCH_SIZE": "150"}
    a = spawn("etl", env)
    b = spawn("etl", env)
    for k in range(6):
        insert_rows(clean, 1000, start=k * 1000)
        publish_rows(redis_url, namespace, clean, f"WHERE id > {k * 1000}")
    want = wait_converged(clean, 60)
    assert target_sum(clean) == want
    assert rollup_mismatches(clean) == []
    assert dead_letters(redis_url, namespace) == []
    # both took part, and the rows each reports inserting add up to the rows there are
    wait_for(lambda: rows_inserted(a.url) + rows_inserted(b.url) == want[0], 10, "counters")
    assert rows_inserted(a.url) > 0 and rows_inserted(b.url) > 0
    # heartbeat facts the metrics API reads
    client = redis.Redis.from_url(redis_url)
    beats = wait_for(
        lambda: [
            orjson.loads(v)
            for k, v in client.hgetall(Channels(namespace).services).items()
            if k.startswith(b"etl/")
        ],
        10,
        "heartbeats",
    )
    time.sleep(0.6)  # one more heartbeat after the last batch
    beats = [
        orjson.loads(v)
        for k, v in client.hgetall(Channels(namespace).services).items()
        if k.startswith(b"etl/")
    ]
    assert len(beats) == 2
    for hb in beats:
        st = hb["status"]
        assert st["mode"] == "hybrid" and st["path"] == storage
        assert isinstance(st["lag_seconds"], float | int) and st["lag_seconds"] >= 0
    assert sum(hb["status"]["rows_total"] for hb in beats) == want[0]
    client.close()
    assert a.stop() == 0 and b.stop() == 0
