"""Leadership: one active evaluator among replicas, through `RedisLease`.

`Leadership` is an async context manager: inside it a task renews the lease every third
of its TTL and keeps `active` set only while this instance holds it; leaving the block
stops renewing and releases the lease, after the evaluator and deliveries have stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis, RedisLease
from redis.exceptions import RedisError

from . import metrics

log = get_logger("alerter.leader")


class Leadership:
    def __init__(self, client: AnyRedis, key: str, owner: str, ttl: float) -> None:
        self.lease = RedisLease(client, key, owner, ttl)
        self.ttl = ttl
        self.active = asyncio.Event()
        #: incremented on every gain: readers reload shared state when it changes
        self.term = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def owner(self) -> str:
        return self.lease.owner

    @property
    def is_leader(self) -> bool:
        return self.active.is_set()

    async def _renew_loop(self) -> None:
        while True:
            try:
                held = await self.lease.acquire_or_renew()
            except (RedisError, OSError) as exc:
                log.warning("leader.renew_failed", error=str(exc))
                held = False
                self.lease.held = False
            if held and not self.active.is_set():
                self.term += 1
                log.info("leader.acquired", term=self.term)
                self.active.set()
            elif not held and self.active.is_set():
                log.warning("leader.lost")
                self.active.clear()
            metrics.LEADER.set(1 if held else 0)
            await asyncio.sleep(self.ttl / 3)

    async def __aenter__(self) -> Leadership:
        self._task = asyncio.create_task(self._renew_loop(), name="lease")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel("alerter stopping")
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.active.clear()
        metrics.LEADER.set(0)
        await self.lease.release()
        log.info("leader.released")
