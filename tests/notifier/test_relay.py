"""The notifier as a real process against real PostgreSQL and Redis: exactly-once relay in
per-row commit order under concurrent writers with rollbacks, SIGKILL and restart, two
instances with failover, Redis and PostgreSQL connection loss, large rows, bad rows."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import psycopg
import redis.asyncio as aredis
from bridge_common.channels import Channels
from bridge_common.events import assemble_event, decode_event

from tests.notifier.probes import metric, wait_until
from tests.notifier.workload import (
    assert_exactly_once_in_order,
    create_watched_table,
    run_writers,
    wait_stream_len,
)


async def test_concurrent_writers_exactly_once_in_commit_order(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    await create_watched_table(migrated_dsn, "items")
    spawn("notifier", bridge_env)
    commits = await run_writers(migrated_dsn, "items", writers=8, transactions=500, seed=7)
    assert commits > 2500
    total = await assert_exactly_once_in_order(migrated_dsn, aredis_client, namespace, "items")
    assert total >= 9000
    # pruned once Redis has them: the last batch with the next wake-up or poll
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 5
        while True:
            cur = await conn.execute("SELECT count(*) FROM bridge.outbox WHERE topic = 'items'")
            left = await cur.fetchone()
            if left == (0,):
                break
            assert time.monotonic() < deadline, f"{left} rows never pruned"
            await asyncio.sleep(0.1)


async def test_sigkill_mid_stream_and_restart_is_still_exactly_once(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    await create_watched_table(migrated_dsn, "killed")
    proc = spawn("notifier", {**bridge_env, "BRIDGE_NOTIFIER_BATCH_SIZE": "200"})
    writers = asyncio.create_task(
        run_writers(migrated_dsn, "killed", writers=4, transactions=600, seed=11, pace=0.004)
    )
    for seen in (400, 1500):
        await wait_stream_len(aredis_client, namespace, "killed", seen, timeout=20)
        assert not writers.done(), "writers finished before the kill; make them longer"
        proc.kill()
        proc.stop()
        await asyncio.to_thread(proc.start)
    await writers
    await assert_exactly_once_in_order(migrated_dsn, aredis_client, namespace, "killed")


async def test_history_rows_republished_after_a_crash_are_skipped_by_the_script(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    """A crash after the history commit, midway through the publish, leaves the topic's
    published mark behind what Redis holds; the next leader publishes every history row
    above the mark again and the script skips the ids Redis already has."""
    await create_watched_table(migrated_dsn, "replayed")
    await run_writers(migrated_dsn, "replayed", writers=2, transactions=50, seed=3)
    proc = spawn("notifier", bridge_env)
    total = await assert_exactly_once_in_order(migrated_dsn, aredis_client, namespace, "replayed")
    proc.stop()
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        # the mark as a crash right after the history commit of the last 40 would leave it
        await conn.execute(
            "UPDATE bridge.history_topics t SET pub_ms = h.ms, pub_n = h.n FROM ("
            "SELECT ms, n FROM bridge.history WHERE topic = 'replayed' ORDER BY ms DESC, "
            "n DESC OFFSET 40 LIMIT 1) h WHERE t.topic = 'replayed'"
        )
    proc = spawn("notifier", bridge_env)
    await wait_until(
        lambda: metric(proc, "bridge_notifier_history_republished_total") == 40,
        10,
        "the last 40 history rows published again",
    )
    assert metric(proc, "bridge_notifier_duplicates_dropped_total") == 40
    assert metric(proc, "bridge_notifier_redis_data_lost_total") == 0
    assert (
        await assert_exactly_once_in_order(migrated_dsn, aredis_client, namespace, "replayed")
        == total
    )


async def test_two_notifiers_one_leader_and_failover(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    await create_watched_table(migrated_dsn, "failover")
    a = spawn("notifier", bridge_env)
    b = spawn("notifier", bridge_env)

    def one_leader() -> bool:
        return sorted(
            [metric(a, "bridge_notifier_leader"), metric(b, "bridge_notifier_leader")]
        ) == [0.0, 1.0]

    await wait_until(one_leader, 10, "exactly one leader")
    leader, standby = (a, b) if metric(a, "bridge_notifier_leader") == 1.0 else (b, a)
    # the heartbeat tells the metrics API the same
    await asyncio.sleep(1.0)  # a heartbeat from each after the election
    beats = [
        orjson.loads(v)
        for v in (await aredis_client.hgetall(Channels(namespace).services)).values()
    ]
    ours = {
        hb["status"]["port"]: hb["status"]["leader"]
        for hb in beats
        if hb["status"].get("port") in (a.port, b.port)
    }
    assert ours == {leader.port: True, standby.port: False}
    writers = asyncio.create_task(
        run_writers(migrated_dsn, "failover", writers=3, transactions=450, seed=5, pace=0.004)
    )
    await wait_stream_len(aredis_client, namespace, "failover", 300, timeout=20)
    assert not writers.done()
    leader.kill()
    took = await wait_until(
        lambda: metric(standby, "bridge_notifier_leader") == 1.0, 10, "the standby to lead"
    )
    print(f"failover took {took:.2f}s")
    await writers
    await assert_exactly_once_in_order(migrated_dsn, aredis_client, namespace, "failover")


async def test_redis_stopped_and_restarted_mid_stream_loses_nothing(
    spawn, bridge_env, migrated_dsn, namespace, private_redis
) -> None:
    await create_watched_table(migrated_dsn, "outage")
    env = {**bridge_env, "BRIDGE_REDIS_URL": private_redis.url}
    proc = spawn("notifier", env)
    client = aredis.Redis.from_url(private_redis.url)
    try:
        writers = asyncio.create_task(
            run_writers(migrated_dsn, "outage", writers=3, transactions=450, seed=9, pace=0.004)
        )
        await wait_stream_len(client, namespace, "outage", 300, timeout=20)
        private_redis.kill()
        await asyncio.sleep(1.5)  # writes keep committing into the outbox meanwhile
        async with await psycopg.AsyncConnection.connect(migrated_dsn) as conn:
            cur = await conn.execute("SELECT count(*) FROM bridge.outbox WHERE topic = 'outage'")
            row = await cur.fetchone()
            assert row is not None and row[0] > 0, "rows wait in the outbox while Redis is down"
        private_redis.start()
        await writers
        await client.aclose()
        client = aredis.Redis.from_url(private_redis.url)
        await assert_exactly_once_in_order(migrated_dsn, client, namespace, "outage")
        assert (metric(proc, "bridge_notifier_redis_errors_total") or 0) >= 1
        assert proc.alive()
    finally:
        await client.aclose()


async def test_postgres_connection_loss_reconnects_and_relays(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    await create_watched_table(migrated_dsn, "pgloss")
    proc = spawn("notifier", bridge_env)
    writers = asyncio.create_task(
        run_writers(migrated_dsn, "pgloss", writers=3, transactions=250, seed=13, pace=0.004)
    )
    await wait_stream_len(aredis_client, namespace, "pgloss", 200, timeout=20)
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'bridge-notifier'"
        )
        assert (await cur.fetchone()) == (1,)
    await writers
    await assert_exactly_once_in_order(migrated_dsn, aredis_client, namespace, "pgloss")
    assert metric(proc, "bridge_notifier_db_reconnects_total") == 1.0
    assert metric(proc, "bridge_notifier_leader") == 1.0


async def test_a_100kb_row_arrives_whole_live_and_in_the_stream(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    ch = Channels(namespace)
    await create_watched_table(migrated_dsn, "big")
    spawn("notifier", bridge_env)
    pubsub = aredis_client.pubsub()
    await pubsub.subscribe(ch.live("big"))
    await pubsub.get_message(timeout=1)
    pad = "".join(chr(0x41 + i % 26) for i in range(100_000)) + 'é"\\\n'
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO big (id, w, pad) VALUES (1, 0, %s)", (pad,))
    msg = None
    deadline = time.monotonic() + 10
    while msg is None and time.monotonic() < deadline:
        msg = await pubsub.get_message(timeout=1, ignore_subscribe_messages=True)
    await pubsub.aclose()
    assert msg is not None, "no live event"
    # the live message is the event, then after a newline its gateway-only meta
    event, _, meta = msg["data"].rpartition(b"\n")
    live = decode_event(event)
    assert live.op == "insert" and live.key == "1" and live.data["pad"] == pad
    [(sid, fields)] = await aredis_client.xrange(ch.stream("big"))
    stored = assemble_event("big", sid, fields[b"f"])
    assert stored == event  # the same bytes for live fan-out and for replay
    assert fields[b"m"] == meta and meta.startswith(b'{"x":')
    assert live.id == sid.decode()


async def test_topics_registered_heartbeat_status_and_metrics(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    await create_watched_table(migrated_dsn, "observed")
    proc = spawn("notifier", bridge_env)
    ch = Channels(namespace)

    async def registered() -> set[bytes]:
        return set(await aredis_client.smembers(ch.topics))

    deadline = time.monotonic() + 10
    while {b"intents", b"audit_logs", b"observed"} - await registered():
        assert time.monotonic() < deadline, await registered()
        await asyncio.sleep(0.1)
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO observed (id, w) SELECT g, 0 FROM generate_series(1, 25) g")
    await wait_stream_len(aredis_client, namespace, "observed", 25, timeout=10)

    def heartbeat_caught_up() -> bool:
        return (metric(proc, 'bridge_notifier_events_published_total{topic="observed"}') or 0) >= 25

    await wait_until(heartbeat_caught_up, 10, "published counter")
    await asyncio.sleep(1.2)  # one more heartbeat after the publish
    beats = await aredis_client.hgetall(ch.services)
    [status] = [
        hb["status"]
        for hb in map(orjson.loads, beats.values())
        if hb["status"].get("port") == proc.port
    ]
    assert status["leader"] is True
    assert status["published_total"] >= 25
    assert status["outbox_backlog"] == 0
    assert status["lag_seconds"] == 0
    for name in (
        "bridge_notifier_outbox_backlog",
        "bridge_notifier_lag_seconds",
        "bridge_notifier_leader",
        "bridge_notifier_events_published_total",
    ):
        assert metric(proc, name) is not None, name


async def test_a_row_with_an_invalid_topic_is_rejected_and_the_relay_goes_on(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    proc = spawn("notifier", bridge_env)
    await create_watched_table(migrated_dsn, "aftermath")
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO bridge.outbox (topic, op, key, payload) "
            "VALUES ('no such topic!', 'insert', '1', '{}')"
        )
        await conn.execute("INSERT INTO aftermath (id, w) VALUES (1, 0)")
    assert await wait_stream_len(aredis_client, namespace, "aftermath", 1, timeout=10) == 1
    assert metric(proc, "bridge_notifier_rows_rejected_total") == 1.0
    assert '"outbox.row_rejected"' in proc.logs()
    assert proc.alive()


def test_invalid_configuration_exits_2_with_one_line(bridge_env) -> None:
    env = {**bridge_env, "BRIDGE_NOTIFIER_BATCH_SIZE": "0", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-m", "bridge_notifier"], env=env, capture_output=True, timeout=30
    )
    assert res.returncode == 2
    err = res.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "BRIDGE_NOTIFIER_BATCH_SIZE" in err


async def test_stream_is_bounded_and_the_outbox_vacuumed_after_a_drain(
    spawn, bridge_env, migrated_dsn, namespace, aredis_client
) -> None:
    await create_watched_table(migrated_dsn, "bounded")
    env = {**bridge_env, "BRIDGE_STREAM_MAXLEN": "100", "BRIDGE_NOTIFIER_VACUUM_AFTER": "1000"}
    proc = spawn("notifier", env)
    async with await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True) as conn:
        for lo in range(0, 2000, 100):
            await conn.execute(
                "INSERT INTO bounded (id, w) SELECT g, 0 FROM generate_series(%s::int, %s::int) g",
                (lo, lo + 99),
            )

    def all_published() -> bool:
        return (
            metric(proc, 'bridge_notifier_events_published_total{topic="bounded"}') or 0
        ) >= 2000

    await wait_until(all_published, 20, "2000 events published")
    length = await aredis_client.xlen(Channels(namespace).stream("bounded"))
    assert 100 <= length < 400  # MAXLEN ~ trims whole stream nodes, so approximately
    [(last_id, fields)] = await aredis_client.xrevrange(
        Channels(namespace).stream("bounded"), count=1
    )
    assert decode_event(assemble_event("bounded", last_id, fields[b"f"])).key == "1999"
    await wait_until(lambda: '"outbox.vacuumed"' in proc.logs(), 10, "the outbox VACUUM")
    assert proc.stop() == 0
    assert '"service.stopped"' in proc.logs() and "Traceback" not in proc.logs()
