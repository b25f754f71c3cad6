"""Silences: a rule muted until a time. Silenced alerts change state but notify nobody."""

from __future__ import annotations

import time
import uuid

import msgspec
from bridge_common.channels import Channels
from bridge_common.events import dumps
from bridge_common.redis import AnyRedis


class Silence(msgspec.Struct, kw_only=True):
    id: str
    rule: str
    starts_at: float
    ends_at: float
    comment: str = ""
    created_by: str = ""

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at


_decoder = msgspec.json.Decoder(Silence)


class SilenceStore:
    """`Channels.silences`: silence id → JSON. Expired silences stay listed for a week."""

    #: expired silences older than this are removed when silences are read
    KEEP_EXPIRED = 7 * 86_400.0

    def __init__(self, client: AnyRedis, channels: Channels) -> None:
        self.client = client
        self.key = channels.silences

    async def add(
        self, rule: str, duration: float, comment: str = "", created_by: str = ""
    ) -> Silence:
        now = time.time()
        silence = Silence(
            id=uuid.uuid4().hex[:12],
            rule=rule,
            starts_at=now,
            ends_at=now + duration,
            comment=comment,
            created_by=created_by,
        )
        await self.client.hset(self.key, silence.id, dumps(silence))
        return silence

    async def all(self) -> list[Silence]:
        raw = await self.client.hgetall(self.key)
        now = time.time()
        out: list[Silence] = []
        stale: list[bytes | str] = []
        for key, value in raw.items():
            try:
                silence = _decoder.decode(value)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if silence.ends_at < now - self.KEEP_EXPIRED:
                stale.append(key)
            else:
                out.append(silence)
        if stale:
            await self.client.hdel(self.key, *stale)
        out.sort(key=lambda s: s.starts_at)
        return out

    async def active(self, now: float | None = None) -> dict[str, Silence]:
        """Rule name → an active silence of it."""
        t = time.time() if now is None else now
        return {s.rule: s for s in await self.all() if s.active(t)}

    async def restore(self, silences: list[Silence]) -> None:
        """Write back silences Redis lost (see `evaluator.Evaluator`), unless one with the
        same id was written meanwhile."""
        for silence in silences:
            await self.client.hsetnx(self.key, silence.id, dumps(silence))

    async def expire(self, silence_id: str) -> Silence | None:
        raw = await self.client.hget(self.key, silence_id)
        if raw is None:
            return None
        silence = _decoder.decode(raw)
        silence.ends_at = min(silence.ends_at, time.time())
        await self.client.hset(self.key, silence_id, dumps(silence))
        return silence
