"""When to reconnect: capped exponential backoff with full jitter, reset after a healthy period.

`backoff_delay` is the pure schedule (attempt n waits uniformly in
``[0, min(cap, base * 2**n)]``, the "full jitter" of the AWS architecture blog), so a
fleet of clients that lost the same gateway does not come back in lock-step.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_MAX_EXPONENT = 62


def backoff_ceiling(attempt: int, base: float, cap: float) -> float:
    """Upper bound of the delay before reconnect attempt `attempt` (0-based)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    return float(min(cap, base * (2 ** min(attempt, _MAX_EXPONENT))))


def backoff_delay(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """A delay drawn uniformly from ``[0, backoff_ceiling(attempt)]`` (full jitter)."""
    return rand() * backoff_ceiling(attempt, base, cap)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect policy: `base`/`cap` in seconds; a connection that stayed up
    `healthy_after` seconds resets the attempt counter."""

    base: float = 0.5
    cap: float = 10.0
    healthy_after: float = 10.0

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap):
            raise ValueError("need 0 < base <= cap")
        if self.healthy_after < 0:
            raise ValueError("healthy_after must be >= 0")


@dataclass(slots=True)
class ReconnectSchedule:
    """The attempt counter of one connection loop."""

    policy: Backoff
    rand: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic
    attempt: int = 0
    _up_since: float | None = field(default=None, repr=False)

    def connected(self) -> None:
        self._up_since = self.clock()

    def disconnected(self) -> None:
        """Call when a connection that `connected()` ended; resets after a healthy period."""
        if (
            self._up_since is not None
            and self.clock() - self._up_since >= self.policy.healthy_after
        ):
            self.attempt = 0
        self._up_since = None

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempt, self.policy.base, self.policy.cap, self.rand)
        self.attempt += 1
        return delay
