"""Waiting for a state, never for a fixed time: `eventually(probe)` in plain code,
`await eventually_async(check)` inside an event loop (the check may be a coroutine)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
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


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Call `check` until it returns a truthy value (returned) or raises no AssertionError
    and returns truthy; fail with the last result when `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
            last = result
        except AssertionError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached in {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)
