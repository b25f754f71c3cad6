"""Looking at a running notifier from outside: its /metrics, and polling with a deadline."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import httpx


def metric(proc: Any, name: str) -> float | None:
    """Sum of a metric's samples on the process's /metrics (None when unreachable)."""
    try:
        text = httpx.get(proc.url + "/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    total = None
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m:
            total = (total or 0.0) + float(m.group(2))
    return total


async def wait_until(cond: Any, timeout: float, what: str) -> float:
    """Poll `cond()` until true; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if await asyncio.to_thread(cond):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
