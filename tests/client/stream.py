"""A steady numbered event stream into a topic, and what a client made of it.

Events enter Redis only through `EventPublisher` (as the notifier's do). Each carries
`n` and is published with outbox sequence `n`, so a publish retried after a Redis crash
is applied once: the topic holds exactly 1..N, and a client must see exactly 1..N.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from bridge_client import BridgeClientError, HistoryLost, Subscription
from bridge_common.channels import Channels
from bridge_common.events import event_fragment
from bridge_common.redis import EventPublisher
from redis.asyncio import Redis
from redis.exceptions import RedisError


def fragment(n: int, **fields: object) -> bytes:
    return event_fragment("insert", str(n), {"n": n, **fields}, datetime.now(UTC).isoformat())


class Ticker:
    """Publishes n = 1, 2, ... on `topic` every `interval` seconds, riding out Redis outages."""

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        topic: str,
        *,
        interval: float = 0.01,
        maxlen: int = 100_000,
    ) -> None:
        self.redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
        self.publisher = EventPublisher(self.redis, Channels(namespace), maxlen=maxlen)
        self.topic = topic
        self.interval = interval
        self.published = 0
        self.ids: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        """Make the topic known to the gateway before the first event."""
        await self.redis.sadd(self.publisher.channels.topics, self.topic)

    async def publish(self, n: int, **fields: object) -> None:
        """Publish event `n`, retrying until Redis acknowledges it."""
        while True:
            try:
                [event_id] = await self.publisher.publish(self.topic, [(n, fragment(n, **fields))])
                if event_id is not None:
                    self.ids[n] = event_id
                break
            except (RedisError, OSError):
                await asyncio.sleep(0.05)
        self.published = max(self.published, n)

    async def _run(self, count: int) -> None:
        for n in range(self.published + 1, self.published + count + 1):
            await self.publish(n)
            await asyncio.sleep(self.interval)

    def start(self, count: int) -> None:
        self._task = asyncio.create_task(self._run(count))

    async def wait_published(self, n: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while self.published < n:
                if self._task is not None and self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)

    async def finish(self) -> None:
        if self._task is not None:
            await self._task

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()


@contextlib.asynccontextmanager
async def ticker(redis_url: str, namespace: str, topic: str, **kw: object) -> AsyncIterator[Ticker]:
    t = Ticker(redis_url, namespace, topic, **kw)  # type: ignore[arg-type]
    await t.register()
    try:
        yield t
    finally:
        await t.aclose()


class Collector:
    """Consumes a subscription in the background, keeping every `n` it saw, in order."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.seen: list[int] = []
        self.ids: list[str] = []
        self.errors: list[BridgeClientError] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                async for event in self.sub:
                    self.seen.append(int(event.data["n"]))
                    self.ids.append(event.id)
                return
            except BridgeClientError as exc:
                self.errors.append(exc)
                if not isinstance(exc, HistoryLost):
                    return  # final: the subscription is over

    async def wait_for(self, n: int, timeout: float = 30.0) -> list[int]:
        """Until `n` events arrived; fails with what was seen when time is up."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.seen) < n:
                    if self._task.done():
                        self._task.result()
                        break
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(
                f"saw {len(self.seen)} of {n} events; last {self.seen[-5:]}; errors {self.errors}"
            ) from None
        return self.seen

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def gaps_and_duplicates(seen: list[int], expected: int) -> tuple[list[int], list[int]]:
    counts: dict[int, int] = {}
    for n in seen:
        counts[n] = counts.get(n, 0) + 1
    missing = [n for n in range(1, expected + 1) if n not in counts]
    dups = sorted(n for n, c in counts.items() if c > 1)
    return missing, dups
