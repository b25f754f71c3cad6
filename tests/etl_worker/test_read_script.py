"""The event-mode check-and-read script against a real Redis 7, case by case: a loss is
reported whenever the group missed trimmed entries, once, and never when it did not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from bridge_etl.stream import _READ_LUA

from tests.support.infra import unique_name

GROUP = "g"


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key(r: redis.Redis, namespace: str) -> Iterator[str]:
    name = f"{namespace}:{{{unique_name('s')}}}:stream"
    yield name
    r.delete(name)


def add(r: redis.Redis, key: str, n: int, maxlen: int | None = None) -> None:
    for _ in range(n):
        if maxlen is None:
            r.xadd(key, {"f": b"x"})
        else:
            r.xadd(key, {"f": b"x"}, maxlen=maxlen, approximate=True)


def read(r: redis.Redis, key: str, count: int = 10) -> tuple[int, int]:
    """(lost flag, entries read); -1 when the stream or group is missing."""
    resp = r.eval(_READ_LUA, 1, key, GROUP, "c1", count)
    if int(resp[0]) == -1:
        return -1, 0
    return int(resp[0]), len(resp[3])


def drain(r: redis.Redis, key: str) -> list[int]:
    flags = []
    while True:
        lost, n = read(r, key, 50)
        flags.append(lost)
        if n == 0:
            return flags


def test_missing_stream_or_group(r, key) -> None:
    assert read(r, key) == (-1, 0)
    add(r, key, 3)
    assert read(r, key) == (-1, 0)
    r.xgroup_create(key, GROUP, id="0")
    assert read(r, key) == (0, 3)


def test_no_loss_when_nothing_was_trimmed_or_only_what_was_read(r, key) -> None:
    r.xgroup_create(key, GROUP, id="0", mkstream=True)
    add(r, key, 250)
    assert set(drain(r, key)) == {0}
    # trims behind the group's position are not losses
    add(r, key, 5)
    assert read(r, key) == (0, 5)
    add(r, key, 20)
    assert set(drain(r, key)) == {0}
    r.xtrim(key, maxlen=10, approximate=False)  # only entries the group already read
    add(r, key, 3)
    assert read(r, key) == (0, 3)


def test_trim_past_the_group_is_reported_once(r, key) -> None:
    r.xgroup_create(key, GROUP, id="0", mkstream=True)
    add(r, key, 10)
    assert read(r, key, 5) == (0, 5)
    add(r, key, 400, maxlen=50)  # the 5 unread and most of the 400 are gone
    flags = drain(r, key)
    assert flags[0] == 1 and set(flags[1:]) == {0}
    add(r, key, 5)
    assert read(r, key) == (0, 5)


def test_trim_exactly_to_the_group_position_is_not_a_loss(r, key) -> None:
    r.xgroup_create(key, GROUP, id="0", mkstream=True)
    add(r, key, 10)
    assert read(r, key, 10) == (0, 10)
    add(r, key, 5)
    r.xtrim(key, maxlen=5, approximate=False)  # drops exactly the 10 entries read
    assert read(r, key) == (0, 5)


def test_group_created_at_start_of_an_already_trimmed_stream(r, key) -> None:
    """Redis cannot vouch for the group's count: assumed lost (the repair then loads the
    history the stream no longer holds), and reported once."""
    add(r, key, 400, maxlen=50)
    r.xgroup_create(key, GROUP, id="0")
    flags = drain(r, key)
    assert flags[0] == 1 and set(flags[1:]) == {0}


def test_whole_stream_trimmed_after_the_group_position(r, key) -> None:
    r.xgroup_create(key, GROUP, id="0", mkstream=True)
    add(r, key, 3)
    assert read(r, key, 1) == (0, 1)
    r.xtrim(key, maxlen=0, approximate=False)
    assert read(r, key) == (1, 0)
    assert read(r, key) == (0, 0)
