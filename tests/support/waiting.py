"""`eventually()`: wait for a state, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Call `probe` until it returns something truthy (returned); AssertionError after
    `timeout` seconds naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or probe!r} (last: {last!r})")
        time.sleep(interval)
        last = probe()
    return last
