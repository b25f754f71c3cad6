"""The metrics snapshot publisher: every `BRIDGE_SNAPSHOT_INTERVAL` seconds, by one replica.

Delivery guarantee: a snapshot is a periodic *sample*, not a log. Exactly one replica
publishes at a time — the holder of the lease `Channels.leader("snapshot")` — so snapshot
times in the stream strictly increase and two replicas never interleave. A replica that
dies (even SIGKILL) stops renewing; another takes over once the lease expires
(`3 × interval`), so at most that long passes without a snapshot and nothing published is
ever rewritten or repeated. Each snapshot goes to the stream (bounded, `MAXLEN ~`), the
channel and the latest key in one MULTI/EXEC (see `bridge_common.snapshots`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from bridge_common.channels import Channels
from bridge_common.events import MetricsSnapshot
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis, RedisLease
from bridge_common.snapshots import publish_snapshot
from prometheus_client import Counter, Gauge

log = get_logger(__name__)

SNAPSHOTS = Counter("bridge_metrics_snapshots_published_total", "Metrics snapshots published")
SNAPSHOT_FAILURES = Counter(
    "bridge_metrics_snapshot_failures_total", "Snapshot ticks that could not publish"
)
LEADER = Gauge("bridge_metrics_snapshot_leader", "1 while this replica publishes snapshots")

Collect = Callable[[], Awaitable[dict[str, float | None]]]


class SnapshotPublisher:
    def __init__(
        self,
        client: AnyRedis,
        channels: Channels,
        collect: Collect,
        *,
        owner: str,
        interval: float,
        maxlen: int,
    ) -> None:
        self.client = client
        self.channels = channels
        self.collect = collect
        self.owner = owner
        self.interval = interval
        self.maxlen = maxlen
        # long enough to survive one slow tick, short enough for a quick takeover
        self.lease = RedisLease(
            client, channels.leader("snapshot"), owner, ttl=max(3 * interval, 1.0)
        )
        self.last_ts = 0.0

    async def tick(self) -> MetricsSnapshot | None:
        """Publish one snapshot if this replica holds (or wins) the lease."""
        if not await self.lease.acquire_or_renew():
            LEADER.set(0)
            return None
        LEADER.set(1)
        metrics = await self.collect()
        # the lease may have lapsed while collecting: re-check before writing
        if not await self.lease.acquire_or_renew():
            LEADER.set(0)
            return None
        ts = max(time.time(), self.last_ts + 1e-6)
        snap = MetricsSnapshot(ts=ts, metrics=metrics, source=self.owner)
        await publish_snapshot(self.client, self.channels, snap, maxlen=self.maxlen)
        self.last_ts = ts
        SNAPSHOTS.inc()
        return snap

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while not stop.is_set():
                try:
                    snap = await self.tick()
                    if snap is not None:
                        log.debug("snapshot.published", metrics=len(snap.metrics))
                except Exception as exc:  # noqa: BLE001 - Redis/DB hiccup: try next tick
                    SNAPSHOT_FAILURES.inc()
                    log.warning("snapshot.failed", error=f"{type(exc).__name__}: {exc}")
                next_at += self.interval
                # after a long stall, skip missed ticks rather than bursting to catch up
                next_at = max(next_at, loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next_at - loop.time())
        finally:
            LEADER.set(0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.lease.release(), 1.0)
