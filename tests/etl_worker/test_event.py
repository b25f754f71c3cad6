"""Event mode: the audit_logs stream through the consumer group, exactly once; dead letters;
kill -9 and takeover of the dead consumer's pending entries; the real notifier upstream."""

from __future__ import annotations

import json

import psycopg
import redis
from bridge_common.channels import Channels

from tests.etl_worker.audit import (
    dead_letters,
    event_of,
    insert_rows,
    publish_fragments,
    publish_rows,
    rollup_mismatches,
    source_sum,
    target_sum,
    wait_converged,
    wait_for,
)


def _pending(redis_url: str, namespace: str) -> int:
    ch = Channels(namespace)
    r = redis.Redis.from_url(redis_url)
    try:
        return int(r.xpending(ch.stream("audit_logs"), ch.etl_group)["pending"])
    finally:
        r.close()


def test_event_mode_moves_every_row_exactly_once(
    spawn, etl_env, clean, redis_url, namespace
) -> None:
    insert_rows(clean, 3000)
    # published before the group exists: the group starts at the stream's beginning
    publish_rows(redis_url, namespace, clean, "WHERE id <= 1000")
    proc = spawn("etl", {**etl_env, "BRIDGE_ETL_MODE": "event", "BRIDGE_ETL_BATCH_SIZE": "400"})
    publish_rows(redis_url, namespace, clean, "WHERE id > 1000")
    # a replay of some events (notifier restart) changes nothing
    publish_rows(redis_url, namespace, clean, "WHERE id BETWEEN 500 AND 700")
    wait_converged(clean)
    wait_for(lambda: _pending(redis_url, namespace) == 0, 10, "all entries acknowledged")
    assert target_sum(clean) == source_sum(clean)
    assert rollup_mismatches(clean) == []
    assert proc.stop() == 0


def test_bad_events_go_to_the_dead_letter_stream(
    spawn, etl_env, clean, redis_url, namespace
) -> None:
    good = {
        "id": 1,
        "actor": "a",
        "action": "x",
        "severity": "info",
        "details": {},
        "intent_id": None,
        "created_at": "2026-11-28T10:00:00+00:00",
    }
    import datetime as dt

    good["created_at"] = dt.datetime.now(dt.UTC).isoformat()
    bad_rows = [
        {**good, "id": 2, "details": "{not json"},
        {**good, "id": 3, "actor": None},
        {**good, "id": 4, "created_at": "yesterday"},
        {**good, "id": 5, "severity": "loud"},
        {**good, "id": 6, "intent_id": "not-a-uuid"},
        {**good, "id": 7, "details": [1, 2]},
    ]
    frags = [event_of(good)] + [event_of(r) for r in bad_rows]
    frags.append((None, b'","op":"insert","key":"8","data":{oops'))  # undecodable
    frags.append(event_of({**good, "id": 9, "details": json.dumps({"legacy": True})}))
    publish_fragments(redis_url, namespace, frags)
    proc = spawn("etl", {**etl_env, "BRIDGE_ETL_MODE": "event"})
    wait_for(lambda: len(dead_letters(redis_url, namespace)) == 7, 20, "7 dead letters")
    wait_for(lambda: _pending(redis_url, namespace) == 0, 10, "all entries acknowledged")
    letters = {d["source_id"] or d["entry_id"]: d for d in dead_letters(redis_url, namespace)}
    assert "not valid JSON" in letters["2"]["reason"]
    assert "actor is NULL" in letters["3"]["reason"]
    assert "created_at" in letters["4"]["reason"]
    assert "severity" in letters["5"]["reason"]
    assert "not a UUID" in letters["6"]["reason"]
    assert "JSON object" in letters["7"]["reason"]
    undecodable = [d for d in letters.values() if d["reason"].startswith("undecodable")]
    assert len(undecodable) == 1 and undecodable[0]["origin"] == "stream"
    with psycopg.connect(clean) as conn:
        ids = [r[0] for r in conn.execute("SELECT source_id FROM audit_logs_ts ORDER BY 1")]
        details = conn.execute("SELECT details FROM audit_logs_ts WHERE source_id = 9").fetchone()
    assert ids == [1, 9] and details == ({"legacy": True},)
    # the worker goes on: a later good event still lands
    publish_fragments(redis_url, namespace, [event_of({**good, "id": 10})])
    wait_for(lambda: target_sum(clean)[0] == 3, 10, "event after the bad ones")
    # the same bad row again (a replay) is not dead-lettered twice
    publish_fragments(redis_url, namespace, [event_of(bad_rows[0])])
    publish_fragments(redis_url, namespace, [event_of({**good, "id": 11})])
    wait_for(lambda: target_sum(clean)[0] == 4, 10, "event after the replayed bad one")
    assert len(dead_letters(redis_url, namespace)) == 7
    assert proc.alive()
    assert proc.stop() == 0


def test_kill_9_mid_stream_then_takeover_of_pending_entries(
    spawn, etl_env, clean, redis_url, namespace
) -> None:
    insert_rows(clean, 20_000)
    publish_rows(redis_url, namespace, clean)
    env = {**etl_env, "BRIDGE_ETL_MODE": "event", "BRIDGE_ETL_BATCH_SIZE": "200"}
    proc = spawn("etl", env)
    wait_for(lambda: target_sum(clean)[0] >= 1000, 30, "first batches")
    proc.kill()
    assert target_sum(clean)[0] < 20_000, "the kill must land mid-stream"
    proc2 = spawn("etl", env)
    wait_converged(clean, 60)
    wait_for(lambda: _pending(redis_url, namespace) == 0, 20, "dead consumer's entries claimed")
    assert target_sum(clean) == source_sum(clean)
    assert rollup_mismatches(clean) == []
    assert dead_letters(redis_url, namespace) == []
    assert proc2.stop() == 0


def test_entry_that_keeps_killing_workers_is_dead_lettered(
    spawn, etl_env, clean, redis_url, namespace
) -> None:
    """An entry delivered more than BRIDGE_ETL_MAX_DELIVERIES times is not tried again."""
    insert_rows(clean, 3)
    publish_rows(redis_url, namespace, clean)
    ch = Channels(namespace)
    stream, group = ch.stream("audit_logs"), ch.etl_group
    r = redis.Redis.from_url(redis_url)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    # dead workers took entry 2 three times and never acknowledged it
    entries = r.xreadgroup(group, "dead-1", {stream: ">"}, count=1)
    poison_id = entries[0][1][0][0]
    for name in ("dead-2", "dead-3"):
        r.xclaim(stream, group, name, 0, [poison_id])
    proc = spawn("etl", {**etl_env, "BRIDGE_ETL_MODE": "event", "BRIDGE_ETL_MAX_DELIVERIES": "3"})
    wait_for(lambda: len(dead_letters(redis_url, namespace)) == 1, 20, "poison dead-lettered")
    [letter] = dead_letters(redis_url, namespace)
    assert letter["entry_id"] == poison_id.decode() and "delivered 4 times" in letter["reason"]
    wait_for(lambda: _pending(redis_url, namespace) == 0, 10, "poison acknowledged")
    assert target_sum(clean)[0] == 2  # the other two entries
    r.close()
    assert proc.stop() == 0


def test_real_notifier_feeds_event_mode(spawn, etl_env, clean) -> None:
    """Rows committed in the source reach the target through the notifier and the stream."""
    spawn("notifier", etl_env)
    proc = spawn("etl", {**etl_env, "BRIDGE_ETL_MODE": "event"})
    insert_rows(clean, 500)
    insert_rows(clean, 500, start=500)
    wait_converged(clean)
    assert target_sum(clean) == source_sum(clean)
    assert rollup_mismatches(clean) == []
    assert proc.stop() == 0
