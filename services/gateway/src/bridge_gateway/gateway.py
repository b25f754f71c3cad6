"""The running gateway: auth, topics, hub, history and every connected client, in one place.

Delivery guarantee (what clients can rely on): every event published on a topic after a
subscription is acknowledged with `subscribed` reaches that client exactly once and in id
order while it stays connected — across Redis reconnects of the gateway and Redis data
losses (the gap is filled from the PostgreSQL history). A client that disconnects (or is
cut off as a slow reader, or the gateway restarts) resumes from its last id with `since` /
`Last-Event-ID` and gets the rest exactly once, from Redis or the history, unless its id
is older than the history's retention or the history database cannot be reached, which it
is told (`history_lost`, the message says which).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bridge_common.channels import Channels
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis

from . import metrics
from .archive import Archive
from .auth import Authenticator, Principal
from .clients import GOING_AWAY, POLICY_VIOLATION, Client, Limits, Transport
from .cors import cors_headers, origin_listed
from .history import REDIS_CONCURRENCY, History
from .hub import Hub
from .presence_redis import PresenceTracker
from .settings import Settings
from .snapshot import Snapshots

log = get_logger(__name__)


def _expire(client: Client) -> None:
    client.cut(POLICY_VIOLATION, "token expired", reason_label="expired")


class TopicRegistry:
    """Which topics exist: the notifier's `topics` set, else a stream of that name, else the
    history's topics — a Redis that lost its data still knows none of them (positive answers
    are cached)."""

    def __init__(
        self,
        redis: AnyRedis,
        channels: Channels,
        limit: asyncio.Semaphore,
        archive: Archive | None = None,
    ) -> None:
        self.redis = redis
        self.archive = archive
        self.channels = channels
        self.limit = limit
        self._known: set[str] = set()
        self._asking: dict[str, asyncio.Future[bool]] = {}

    async def exists(self, topic: str) -> bool:
        while topic not in self._known:
            pending = self._asking.get(topic)
            if pending is None:
                return await self._ask(topic)
            # a thousand clients subscribing at once ask Redis once
            await asyncio.wait([pending])
            if not pending.cancelled():
                return pending.result()
        return True

    async def _ask(self, topic: str) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._asking[topic] = future
        try:
            async with self.limit:
                found = bool(await self.redis.sismember(self.channels.topics, topic))
                if not found:
                    # a Redis that lost the registry still has the streams published since
                    found = bool(await self.redis.exists(self.channels.stream(topic)))
            if not found and self.archive is not None:
                found = await self.archive.has_topic(topic)
        except BaseException:
            future.cancel()  # waiters ask again themselves
            raise
        finally:
            self._asking.pop(topic, None)
        if found:
            self._known.add(topic)
        future.set_result(found)
        return found


class Gateway:
    def __init__(
        self,
        settings: Settings,
        redis: AnyRedis,
        pubsub_redis: AnyRedis,
        archive: Archive | None = None,
        snapshots: Snapshots | None = None,
    ) -> None:
        self.settings = settings
        #: None unless BRIDGE_SNAPSHOT_DSN is set
        self.snapshots = snapshots
        self.channels = Channels(settings.namespace)
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        previous = (
            settings.jwt_previous_secrets.get_secret_value()
            if settings.jwt_previous_secrets
            else ""
        )
        self.auth = Authenticator(
            secret,
            enabled=settings.auth == "jwt",
            previous=tuple(p.strip() for p in previous.split(",") if p.strip()),
            max_lifetime=settings.jwt_max_lifetime,
        )
        limit = asyncio.Semaphore(REDIS_CONCURRENCY)
        self.topics = TopicRegistry(redis, self.channels, limit, archive)
        self.history = History(
            redis, self.channels, settings.replay_batch, limit=limit, archive=archive
        )
        self.hub = Hub(pubsub_redis, self.channels, self.history, retry_base=settings.redis_retry)
        self.limits = Limits(
            max_messages=settings.send_buffer_messages,
            max_bytes=settings.send_buffer_bytes,
            max_subscriptions=settings.max_subscriptions,
            rate=settings.rate_limit,
            burst=settings.rate_burst,
            slow_grace=settings.slow_reader_grace,
            hard_bytes=settings.send_buffer_max_bytes,
        )
        self.origins = settings.origins
        self.clients: set[Client] = set()
        self.presence = PresenceTracker(
            redis,
            pubsub_redis,
            self.channels,
            cap=settings.presence_max_list,
            max_info_bytes=settings.presence_max_info_bytes,
            heartbeat=settings.heartbeat_interval,
            connections=lambda: len(self.clients),
        )
        self.stopping = False
        self._gone = asyncio.Event()

    # -- clients --------------------------------------------------------------------------
    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers send Origin; with an allow-list configured only listed origins pass."""
        if not self.origins or origin is None:
            return True
        return origin_listed(self.origins, origin)

    def cors_headers(self, origin: str | None) -> dict[str, str]:
        """CORS headers for an answer (success or refusal) to a request from `origin`."""
        return cors_headers(self.origins, origin)

    def at_capacity(self) -> bool:
        return len(self.clients) >= self.settings.max_connections

    def open_client(
        self, transport: Transport, principal: Principal, *, write_through: bool = False
    ) -> Client:
        client = Client(transport, principal, self.limits, write_through=write_through)
        if principal.exp is not None:
            # a connection lives no longer than its token: the client reconnects with a
            # fresh one and resumes from its last id
            delay = max(0.0, principal.exp - time.time())
            client.expiry = asyncio.get_running_loop().call_later(delay, _expire, client)
        self.clients.add(client)
        metrics.CONNECTIONS.labels(transport).inc()
        self._gone.clear()
        return client

    def close_client(self, client: Client) -> None:
        client.stop_timers()
        if client in self.clients:
            self.clients.discard(client)
            metrics.CONNECTIONS.labels(client.transport).dec()
        self.presence.forget(client)
        if not self.clients:
            self._gone.set()

    def status(self) -> dict[str, Any]:
        """Heartbeat facts; the metrics API sums `connections` over every gateway."""
        return {
            "connections": len(self.clients),
            "subscriptions": self.hub.subscriptions,
            "topics": len(self.hub.feeds),
            "redis_live": self.hub.connected.is_set(),
            **self.presence.status(),
            # publish → send per topic over the last minute: {topic: {p50, p99, count}}
            "delivery_lag": metrics.RECENT_DELIVERY_LAG.read(),
        }

    def count_replayed(self, n: int) -> None:
        metrics.REPLAYED.inc(n)

    def count_history_lost(self) -> None:
        metrics.HISTORY_LOST.inc()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Worker: the hub until `stop`, then send every client away (1001) in order."""
        hub_task = asyncio.create_task(self.hub.run(stop), name="hub")
        presence_task = asyncio.create_task(self.presence.run(stop), name="presence")
        try:
            await stop.wait()
            self.stopping = True
            log.info("gateway.closing_clients", clients=len(self.clients))
            for client in list(self.clients):
                client.close(GOING_AWAY, "going away", flush=True)
            deadline = max(1.0, self.settings.shutdown_timeout / 2)
            with contextlib.suppress(TimeoutError):
                if self.clients:
                    await asyncio.wait_for(self._gone.wait(), deadline)
            for client in list(self.clients):
                client.cut(GOING_AWAY, "going away", reason_label="shutdown")
        finally:
            await hub_task
            await presence_task
            await self.presence.close()
