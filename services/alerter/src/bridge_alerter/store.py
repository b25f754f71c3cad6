"""Alert state and the notification outbox in Redis, written only by the lease holder.

A state change and the notifications it causes are written in one Lua call that first
checks the leader lease (all keys share the namespace's hash tag, so this also holds on a
cluster). A replica that lost the lease therefore cannot write a stale state or queue a
duplicate notification. A notification stays in `Channels.alert_outbox` until its channel
acknowledged it, which is what makes delivery at-least-once across crashes.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec
import uuid6
from bridge_common.channels import Channels
from bridge_common.events import AlertNotice, dumps, loads
from bridge_common.redis import AnyRedis

from .state import AlertState

#: outbox channel name of the `alerts` topic (`#` cannot start a channel name in rules)
EVENTS_CHANNEL = "#events"

_COMMIT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return 1
"""


def new_delivery_id() -> str:
    """A globally unique, time-ordered notification id (UUIDv7): unlike a Redis counter it
    never restarts after a Redis data loss and never collides across deployments."""
    return str(uuid6.uuid7())


def dedupe_seq(delivery_id: str | int) -> int:
    """The id as the integer the `alerts` topic's publish dedupe keys on."""
    if isinstance(delivery_id, int):
        return delivery_id  # written by a version that counted in Redis
    return uuid.UUID(delivery_id).int


class Delivery(msgspec.Struct, kw_only=True):
    """One notification for one channel (or for the `alerts` topic); every channel's copy
    of one notification has the same `id`."""

    #: `new_delivery_id()`; an int in outboxes written before ids were UUIDs
    id: str | int
    channel: str
    kind: Literal["firing", "repeat", "resolved", "test"]
    created_at: float
    notice: AlertNotice

    @property
    def field(self) -> str:
        return f"{self.id}:{self.channel}"


_delivery_decoder = msgspec.json.Decoder(Delivery)


class AlertStore:
    """Reads and fenced writes of `alert_state` and `alert_outbox`."""

    def __init__(self, client: AnyRedis, channels: Channels, owner: str) -> None:
        self.client = client
        self.channels = channels
        self.owner = owner
        self._commit = client.register_script(_COMMIT_LUA)
        #: the `alert_epoch` token of the data this leader works on (None: not claimed yet)
        self.epoch: str | None = None

    async def load_states(self) -> dict[str, AlertState]:
        raw = await self.client.hgetall(self.channels.alert_state)
        out: dict[str, AlertState] = {}
        for fp, data in raw.items():
            key = fp.decode() if isinstance(fp, bytes) else str(fp)
            try:
                out[key] = AlertState.from_json(loads(data))
            except (msgspec.DecodeError, TypeError, ValueError):
                continue  # written by an incompatible version; rebuilt on next evaluation
        return out

    async def claim_epoch(self) -> None:
        """Mark this Redis as seen by the current leader (a token under `alert_epoch`);
        keeps a token another leader wrote into the same data."""
        await self.client.set(self.channels.alert_epoch, uuid.uuid4().hex, nx=True)
        raw = await self.client.get(self.channels.alert_epoch)
        self.epoch = raw.decode() if isinstance(raw, bytes) else raw

    async def epoch_intact(self) -> bool:
        """False when Redis lost its data since `claim_epoch` (the token is gone)."""
        if self.epoch is None:
            return True
        raw = await self.client.get(self.channels.alert_epoch)
        return (raw.decode() if isinstance(raw, bytes) else raw) == self.epoch

    async def stored_fingerprints(self) -> set[str]:
        raw = await self.client.hkeys(self.channels.alert_state)
        return {f.decode() if isinstance(f, bytes) else str(f) for f in raw}

    async def commit(
        self, fingerprint: str, state: AlertState | None, deliveries: list[Delivery]
    ) -> bool:
        """Write the state (None deletes it) and queue deliveries; False if not the leader."""
        argv: list[Any] = [
            self.owner,
            fingerprint,
            b"" if state is None else dumps(state.to_json()),
        ]
        for d in deliveries:
            argv.extend((d.field, dumps(d)))
        keys = [
            self.channels.leader("alerter"),
            self.channels.alert_state,
            self.channels.alert_outbox,
        ]
        return bool(await self._commit(keys=keys, args=argv))

    async def pending(self, limit: int = 10_000) -> list[Delivery]:
        """Undelivered notifications, oldest first (at most `limit`)."""
        out: list[Delivery] = []
        junk: list[Any] = []
        async for field, raw in self.client.hscan_iter(self.channels.alert_outbox, count=500):
            try:
                out.append(_delivery_decoder.decode(raw))
            except (msgspec.DecodeError, msgspec.ValidationError):
                junk.append(field)  # not ours to send; would be rescanned forever
                continue
            if len(out) >= limit:
                break
        if junk:
            await self.client.hdel(self.channels.alert_outbox, *junk)
        out.sort(key=lambda d: (d.created_at, str(d.id)))
        return out

    async def requeue(self, deliveries: list[Delivery]) -> None:
        """Put deliveries back into the outbox (after Redis lost it), keeping any entry
        that is there already."""
        for d in deliveries:
            await self.client.hsetnx(self.channels.alert_outbox, d.field, dumps(d))

    async def is_pending(self, delivery: Delivery) -> bool:
        return bool(await self.client.hexists(self.channels.alert_outbox, delivery.field))

    async def ack(self, delivery: Delivery) -> None:
        await self.client.hdel(self.channels.alert_outbox, delivery.field)

    async def outbox_size(self) -> int:
        return int(await self.client.hlen(self.channels.alert_outbox))
