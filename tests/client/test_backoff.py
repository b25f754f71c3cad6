"""The reconnect schedule as a pure function, and the attempt counter's reset rule."""

from __future__ import annotations

import pytest
from bridge_client import Backoff, backoff_ceiling, backoff_delay
from bridge_client.backoff import ReconnectSchedule
from hypothesis import given
from hypothesis import strategies as st


def test_ceiling_doubles_from_base_until_cap() -> None:
    ceilings = [backoff_ceiling(n, base=0.5, cap=30.0) for n in range(9)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_huge_attempt_numbers_stay_at_cap() -> None:
    assert backoff_ceiling(10_000, base=0.5, cap=30.0) == 30.0


def test_full_jitter_spans_zero_to_ceiling() -> None:
    assert backoff_delay(3, 0.5, 30.0, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, 0.5, 30.0, rand=lambda: 0.5) == 2.0
    assert backoff_delay(3, 0.5, 30.0, rand=lambda: 0.999999) == pytest.approx(4.0, rel=1e-5)


@given(
    attempt=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0.001, max_value=5.0),
    cap_factor=st.floats(min_value=1.0, max_value=100.0),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_delay_is_bounded_by_ceiling_and_cap(
    attempt: int, base: float, cap_factor: float, r: float
) -> None:
    cap = base * cap_factor
    delay = backoff_delay(attempt, base, cap, rand=lambda: r)
    assert 0.0 <= delay <= backoff_ceiling(attempt, base, cap) <= cap


def test_negative_attempt_and_bad_policy_are_refused() -> None:
    with pytest.raises(ValueError):
        backoff_ceiling(-1, 0.5, 1.0)
    with pytest.raises(ValueError):
        Backoff(base=2.0, cap=1.0)
    with pytest.raises(ValueError):
        Backoff(base=0.0, cap=1.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_schedule_grows_while_connections_fail_and_resets_after_a_healthy_one() -> None:
    clock = FakeClock()
    sched = ReconnectSchedule(
        Backoff(base=1.0, cap=8.0, healthy_after=10.0), rand=lambda: 1.0, clock=clock
    )
    assert [sched.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    # a connection that dies quickly does not reset the counter (no hot reconnect loop)
    sched.connected()
    clock.now += 2.0
    sched.disconnected()
    assert sched.next_delay() == 8.0
    # one that stayed up for the healthy period does
    sched.connected()
    clock.now += 10.0
    sched.disconnected()
    assert [sched.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
