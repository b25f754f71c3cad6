"""The history tier's building blocks: id assignment, durations, the relay's publish
script (explicit ids, re-publish skipped, Redis data loss detected and marked)."""

from __future__ import annotations

import orjson
import pytest
from bridge_common.channels import Channels
from bridge_common.events import event_fragment
from bridge_common.history import format_position, next_position, parse_position
from bridge_common.redis import RelayPublisher, create_redis
from bridge_common.settings import BridgeSettings, parse_duration
from bridge_gateway.history import _trimmed_past
from bridge_notifier.history import Ids
from pydantic import ValidationError


@pytest.fixture
async def client(redis_url: str):  # noqa: ANN201
    c = create_redis(BridgeSettings(BRIDGE_REDIS_URL=redis_url))
    yield c
    await c.aclose()


def test_ids_increase_per_topic_whatever_the_clock_does() -> None:
    ids = Ids()
    ids.start("t", (1000, 4))  # Redis held ids up to 1000-4 before the history existed
    got = [ids.assign("t", ms) for ms in (999, 1000, 1000, 1005, 1003, 1003, 2000)]
    assert got == [(1000, 5), (1000, 6), (1000, 7), (1005, 0), (1005, 1), (1005, 2), (2000, 0)]
    assert ids.topics["t"].first_ms == 1000
    ids.start("u", (0, 0))
    assert ids.assign("u", 7) == (7, 0)
    assert ids.behind() == ["t", "u"]
    ids.published("t", (2000, 0))
    ids.published("u", (7, 0))
    assert ids.behind() == [] and sorted(ids.dirty()) == ["t", "u"]
    rows = ids.state_rows(["t"])
    assert (rows.last_ms, rows.last_n, rows.pub_ms, rows.first_ms) == ([2000], [0], [2000], [1000])
    assert ids.dirty() == ["u"]


def test_positions_round_trip_and_compare_like_stream_ids() -> None:
    assert parse_position("1700000000000-3") == (1700000000000, 3)
    assert parse_position(b"17") == (17, 0)
    assert format_position((5, 9)) == "5-9"
    assert next_position((5, 9), 4) == (5, 10) and next_position((5, 9), 6) == (6, 0)
    for bad in ("", "-1", "1-", "a-1", "1-2-3", "١-0"):
        with pytest.raises(ValueError):
            parse_position(bad)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400.0), ("24h", 86400.0), ("7d", 604800.0), ("3600s", 3600.0), ("7200", 7200.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert BridgeSettings(BRIDGE_HISTORY_RETENTION=text).history_retention == seconds


@pytest.mark.parametrize("text", ["5m", "31d", "1w", "-1h", "soon", ""])
def test_bad_retention_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="history_retention|BRIDGE_HISTORY_RETENTION"):
        BridgeSettings(BRIDGE_HISTORY_RETENTION=text)


def test_history_dsn_defaults_to_the_source() -> None:
    s = BridgeSettings(BRIDGE_SOURCE_DSN="postgresql://src/db", BRIDGE_HISTORY_DSN="")
    assert s.effective_history_dsn == "postgresql://src/db"
    s = BridgeSettings(BRIDGE_SOURCE_DSN="postgresql://src/db", BRIDGE_HISTORY_DSN="host=replica")
    assert s.effective_history_dsn == "host=replica"


def _frags(*ids: str) -> list[tuple[str, bytes]]:
    return [(i, event_fragment("insert", i, {"id": i}, "ts")) for i in ids]


async def test_explicit_ids_fan_out_and_a_republish_is_skipped(client, namespace: str) -> None:
    ch = Channels(namespace)
    pub = RelayPublisher(client, ch)
    ps = client.pubsub()
    await ps.subscribe(ch.live("t1"))
    await ps.get_message(timeout=1)
    assert await pub.publish("t1", "0-0", _frags("10-0", "10-1", "12-0")) == (False, 3)
    # a crashed leader's batch published again, plus one new event
    assert await pub.publish("t1", "10-0", _frags("10-1", "12-0", "13-0")) == (False, 1)
    entries = await client.xrange(ch.stream("t1"))
    assert [e[0] for e in entries] == [b"10-0", b"10-1", b"12-0", b"13-0"]
    live = []
    while len(live) < 4:
        m = await ps.get_message(timeout=2, ignore_subscribe_messages=True)
        assert m is not None
        live.append(orjson.loads(m["data"]))
    assert [e["id"] for e in live] == ["10-0", "10-1", "12-0", "13-0"]
    assert await client.sismember(ch.topics, "t1")
    assert await pub.last_id("t1") == "13-0"
    await ps.aclose()


async def test_a_lost_stream_is_detected_and_marked_for_readers(client, namespace: str) -> None:
    ch = Channels(namespace)
    pub = RelayPublisher(client, ch)
    await pub.publish("t2", "0-0", _frags("10-0", "11-0"))
    await client.delete(ch.stream("t2"), ch.topics)  # what a restart-empty or FLUSHALL does
    lost, added = await pub.publish("t2", "11-0", _frags("12-0"))
    assert (lost, added) == (True, 1)
    info = await client.xinfo_stream(ch.stream("t2"))
    assert info["max-deleted-entry-id"] == b"11-0"
    # a reader at 10-0 knows 11-0 is not in Redis; one at 11-0 knows it has everything
    assert _trimmed_past(info, (10, 0)) and not _trimmed_past(info, (11, 0))
    assert await client.sismember(ch.topics, "t2")  # re-registered at once
    # nothing lost since: the next publish finds the stream where it left it
    assert await pub.publish("t2", "12-0", _frags("13-0")) == (False, 1)


async def test_a_stream_behind_the_last_publish_is_a_loss(client, namespace: str) -> None:
    """A failover to a replica that missed writes: the stream ends below the last id."""
    ch = Channels(namespace)
    pub = RelayPublisher(client, ch)
    # the replica got 10-0 only; the relay had published up to 12-0 on the old primary
    await client.xadd(ch.stream("t3"), {"f": _frags("10-0")[0][1]}, id="10-0")
    lost, added = await pub.publish("t3", "12-0", _frags("13-0"))
    assert (lost, added) == (True, 1)
    info = await client.xinfo_stream(ch.stream("t3"))
    assert info["max-deleted-entry-id"] == b"12-0"
    assert _trimmed_past(info, (10, 0)) and not _trimmed_past(info, (12, 0))


async def test_an_empty_stream_keeps_its_last_id(client, namespace: str) -> None:
    ch = Channels(namespace)
    pub = RelayPublisher(client, ch)
    await pub.publish("t4", "0-0", _frags("10-0", "11-0"))
    await client.xtrim(ch.stream("t4"), maxlen=0, approximate=False)
    # emptied by a trim, not lost: the last generated id still says 11-0
    assert await pub.publish("t4", "11-0", _frags("11-0", "12-0")) == (False, 1)
