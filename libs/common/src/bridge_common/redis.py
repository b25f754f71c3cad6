"""The Redis bus: clients for standalone and Cluster, the atomic event publish, leases.

Events enter Redis through one Lua call per topic batch that appends each event to the
topic's stream (bounded, MAXLEN ~) and fans it out on the live channel (SPUBLISH on a
cluster) atomically, so a reader never sees one without the other.

- :class:`RelayPublisher` (the notifier): ids are assigned upstream and kept in the
  PostgreSQL history; the script appends with those explicit ids, drops an id Redis already
  holds (a re-publish) and detects a Redis data loss — the stream is missing or ends below
  the id the relay last published — which it marks on the stream with
  ``XSETID … MAXDELETEDID <last published id>``: every reader's "trimmed past my position"
  check (``max-deleted-entry-id`` of ``XINFO STREAM``) then sees that what came at or
  before that id is gone from Redis, and fetches it from the history instead.
- :class:`EventPublisher` (publishers without a history, e.g. the alerter): Redis assigns
  the ids; a per-topic dedupe set makes a re-published sequence number a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

# the asyncio clients need the asyncio Retry: given the sync one, their call_with_retry
# returns the coroutine un-awaited and a dead pooled connection fails the command at once
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .channels import Channels
from .events import event_prefix
from .settings import BridgeSettings

AnyRedis: TypeAlias = "Redis | RedisCluster"

#: default bound of each topic's stream (entries, approximate)
DEFAULT_STREAM_MAXLEN = 100_000
#: outbox sequences remembered per topic for idempotent re-publish
DEFAULT_DEDUPE_KEEP = 50_000


#: the oldest Redis the suite runs on: sharded pub/sub, XAUTOCLAIM's deleted-entry report
#: and the stream metadata (XINFO STREAM max-deleted-entry-id) that detects trimmed history
MIN_REDIS_VERSION = (7, 0)


def _auth_and_tls(settings: BridgeSettings) -> dict[str, Any]:
    """Connection options from `BRIDGE_REDIS_USERNAME/_PASSWORD/_TLS/_TLS_CA_FILE`."""
    out: dict[str, Any] = {}
    if settings.redis_username:
        out["username"] = settings.redis_username
    if settings.redis_password is not None and settings.redis_password.get_secret_value():
        out["password"] = settings.redis_password.get_secret_value()
    if settings.redis_tls_ca_file:
        out["ssl_ca_certs"] = settings.redis_tls_ca_file
    return out


def create_redis(
    settings: BridgeSettings,
    *,
    decode_responses: bool = False,
    socket_timeout: float | None = 10.0,
    retries: int = 3,
) -> AnyRedis:
    """A client for `BRIDGE_REDIS_CLUSTER_NODES` when set, else for `BRIDGE_REDIS_URL`.

    Both take `BRIDGE_REDIS_USERNAME` / `BRIDGE_REDIS_PASSWORD` / `BRIDGE_REDIS_TLS`
    (credentials written in the URL win over the variables). Commands retry with jittered
    exponential backoff on connection errors; callers that must survive a long outage
    loop around their own work (see `Backoff`).
    """
    retry = Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries)
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "retry": retry,
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "health_check_interval": 15,
    }
    common.update(_auth_and_tls(settings))
    nodes = settings.cluster_nodes
    if nodes:
        common.pop("retry_on_error")
        common.pop("health_check_interval")
        if settings.redis_tls:
            common["ssl"] = True
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            **common,
        )
    url = settings.redis_url
    if settings.redis_tls and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    if not url.startswith("rediss://"):
        common.pop("ssl_ca_certs", None)
    return Redis.from_url(url, **common)


class RedisTooOld(Exception):
    """The Redis server is older than MIN_REDIS_VERSION."""


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


async def server_versions(client: AnyRedis) -> dict[str, tuple[int, ...]]:
    """`redis_version` of the server, or of every node of a cluster (node → version)."""
    if isinstance(client, RedisCluster):
        out = {}
        for node in client.get_nodes():
            info: Any = await client.info("server", target_nodes=node)
            out[node.name] = _parse_version(str(info.get("redis_version", "0")))
        return out
    info = await client.info("server")
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return {str(where): _parse_version(str(info.get("redis_version", "0")))}


async def require_redis_version(client: AnyRedis) -> None:
    """Raise RedisTooOld naming the server and version when any node is older than 7."""
    for node, version in (await server_versions(client)).items():
        if version < MIN_REDIS_VERSION:
            shown = ".".join(str(v) for v in version)
            raise RedisTooOld(
                f"Redis {shown} at {node}: Bridge Lite needs Redis "
                f"{'.'.join(str(v) for v in MIN_REDIS_VERSION)} or later "
                "(Debian/Ubuntu: apt install redis-server; or the redis:7 image)"
            )


def is_cluster(client: AnyRedis) -> bool:
    return isinstance(client, RedisCluster)


# KEYS: stream, dedupe zset, live channel
# ARGV: prefix, maxlen, use_spublish ("1"/"0"), dedupe_keep, then (seq, fragment) pairs.
# seq "" means "no dedupe" (publishers other than the outbox relay).
# Returns one entry per event: the new stream id, or false when the seq was seen before.
_PUBLISH_LUA = """
local prefix = ARGV[1]
local maxlen = ARGV[2]
local pub = ARGV[3] == '1' and 'SPUBLISH' or 'PUBLISH'
local keep = tonumber(ARGV[4])
local out = {}
local added = false
for i = 5, #ARGV, 2 do
  local seq = ARGV[i]
  local frag = ARGV[i + 1]
  if seq ~= '' and redis.call('ZSCORE', KEYS[2], seq) then
    out[#out + 1] = false
  else
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'seq', seq, 'f', frag)
    if seq ~= '' then
      -- scored by publish time (the id's ms), not by seq: the trim forgets what was
      -- published longest ago, so a late-committing (low) seq is remembered as long as
      -- any other and its replay after a crash is still dropped
      redis.call('ZADD', KEYS[2], tonumber(string.match(id, '^%d+')), seq)
      added = true
    end
    redis.call(pub, KEYS[3], prefix .. id .. frag)
    out[#out + 1] = id
  end
end
if added then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(keep + 1))
end
return out
"""


# KEYS: stream, live channel
# ARGV: prefix, maxlen, use_spublish ("1"/"0"), prev (the id the relay last published on
# this topic, "0-0" for none), the ids (space-separated, increasing), the byte length of
# each fragment (space-separated), and the fragments concatenated — three arguments for a
# whole batch instead of two per event (packing thousands of arguments is what costs);
# optionally the byte length of each event's meta and the metas concatenated (field `m` of
# the entry; on the live channel after a newline that no event's JSON contains).
# Returns {lost (1/0), appended}: an id not above the stream's last id is a re-publish and
# skipped; `lost` means the stream was missing or ended below `prev` (Redis lost data).
_RELAY_LUA = """
local function parse(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(n)
end
local function below(ams, an, bms, bn)
  return ams < bms or (ams == bms and an < bn)
end
local key = KEYS[1]
local pub = ARGV[3] == '1' and 'SPUBLISH' or 'PUBLISH'
local top_ms, top_n = -1, -1
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if last[1] then
  top_ms, top_n = parse(last[1][1])
elseif redis.call('EXISTS', key) == 1 then
  -- an emptied stream still knows its last id (the first fields hold no nil: scan them)
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, 14, 2 do
    if info[i] == 'last-generated-id' then top_ms, top_n = parse(info[i + 1]) end
  end
end
local prev = ARGV[4]
local prev_ms, prev_n = parse(prev)
local lost = (prev_ms > 0 or prev_n > 0) and below(top_ms, top_n, prev_ms, prev_n)
local added = 0
local top_id = nil
local blob = ARGV[7]
local pos = 1
local sizes = string.gmatch(ARGV[6], '%d+')
local mblob = ARGV[9] or ''
local mpos = 1
local msizes = string.gmatch(ARGV[8] or '', '%d+')
for id in string.gmatch(ARGV[5], '%S+') do
  local size = tonumber(sizes())
  local msize = tonumber(msizes() or '0')
  local ms, n = parse(id)
  if below(top_ms, top_n, ms, n) then
    local frag = string.sub(blob, pos, pos + size - 1)
    if msize > 0 then
      local meta = string.sub(mblob, mpos, mpos + msize - 1)
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], id, 'f', frag, 'm', meta)
      redis.call(pub, KEYS[2], ARGV[1] .. id .. frag .. '\\n' .. meta)
    else
      redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], id, 'f', frag)
      redis.call(pub, KEYS[2], ARGV[1] .. id .. frag)
    end
    top_ms, top_n, top_id = ms, n, id
    added = added + 1
  end
  pos = pos + size
  mpos = mpos + msize
end
if lost and top_id then
  local info = redis.call('XINFO', 'STREAM', key)
  local maxdel = '0-0'
  for i = 1, 14, 2 do
    if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
  end
  local dms, dn = parse(maxdel)
  if below(dms, dn, prev_ms, prev_n) then
    redis.call('XSETID', key, top_id, 'MAXDELETEDID', prev)
  end
end
return {lost and 1 or 0, added}
"""


class RelayPublisher:
    """Append events whose ids were assigned upstream (see module docstring)."""

    def __init__(
        self, client: AnyRedis, channels: Channels, *, maxlen: int = DEFAULT_STREAM_MAXLEN
    ) -> None:
        self.client = client
        self.channels = channels
        self.maxlen = maxlen
        self._sha: str | None = None
        self._spublish = is_cluster(client)
        self._known_topics: set[str] = set()

    async def _load(self) -> str:
        sha: str = await self.client.script_load(_RELAY_LUA)
        if isinstance(sha, bytes):
            sha = sha.decode()
        self._sha = sha
        return sha

    def forget_topics(self) -> None:
        """Register every topic again on its next publish (Redis may have lost the set)."""
        self._known_topics.clear()

    async def publish(
        self,
        topic: str,
        prev: str,
        items: Sequence[tuple[str, bytes]],
        metas: Sequence[bytes] | None = None,
    ) -> tuple[bool, int]:
        """Append `(id, fragment)` pairs (ids increasing, all above `prev`) to `topic`,
        each with its gateway-only meta from `metas` (see `bridge_common.history`).

        `prev` is the last id this publisher put on the topic before. Returns (Redis lost
        data on this topic, events appended); ids Redis already holds are skipped.
        """
        if not items:
            return False, 0
        if topic not in self._known_topics:
            await self.client.sadd(self.channels.topics, topic)
            self._known_topics.add(topic)
        keys = [self.channels.stream(topic), self.channels.live(topic)]
        argv: list[Any] = [
            event_prefix(topic),
            self.maxlen,
            "1" if self._spublish else "0",
            prev,
            " ".join([i for i, _ in items]),
            " ".join([str(len(f)) for _, f in items]),
            b"".join([f for _, f in items]),
        ]
        if metas:
            argv += [" ".join([str(len(m)) for m in metas]), b"".join(metas)]
        sha = self._sha or await self._load()
        try:
            result = await self.client.evalsha(sha, len(keys), *keys, *argv)
        except NoScriptError:
            sha = await self._load()
            result = await self.client.evalsha(sha, len(keys), *keys, *argv)
        lost = bool(int(result[0]))
        if lost:
            # whatever wiped the stream wiped the topic registry too (other slot on a cluster)
            await self.client.sadd(self.channels.topics, topic)
        return lost, int(result[1])

    async def last_id(self, topic: str) -> str | None:
        """The id of the newest entry Redis holds on `topic` (None: none)."""
        entries = await self.client.xrevrange(self.channels.stream(topic), "+", "-", count=1)
        if not entries:
            return None
        raw: Any = entries[0][0]
        return raw.decode() if isinstance(raw, bytes) else str(raw)


class EventPublisher:
    """Atomic, idempotent append+fan-out of events to a topic (see module docstring)."""

    def __init__(
        self,
        client: AnyRedis,
        channels: Channels,
        *,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
        dedupe_keep: int = DEFAULT_DEDUPE_KEEP,
    ) -> None:
        self.client = client
        self.channels = channels
        self.maxlen = maxlen
        self.dedupe_keep = dedupe_keep
        self._sha: str | None = None
        self._spublish = is_cluster(client)
        self._known_topics: set[str] = set()

    async def _load(self) -> str:
        sha: str = await self.client.script_load(_PUBLISH_LUA)
        if isinstance(sha, bytes):
            sha = sha.decode()
        self._sha = sha
        return sha

    async def publish(
        self, topic: str, items: Sequence[tuple[int | None, bytes]]
    ) -> list[str | None]:
        """Publish `(outbox_seq or None, fragment)` pairs on `topic`, in order.

        Returns each event's stream id, or None where the sequence was already published.
        """
        if not items:
            return []
        if topic not in self._known_topics:
            await self.client.sadd(self.channels.topics, topic)
            self._known_topics.add(topic)
        keys = [self.channels.stream(topic), self.channels.dedupe(topic), self.channels.live(topic)]
        argv: list[Any] = [
            event_prefix(topic),
            self.maxlen,
            "1" if self._spublish else "0",
            self.dedupe_keep,
        ]
        for seq, frag in items:
            argv.append("" if seq is None else str(seq))
            argv.append(frag)
        sha = self._sha or await self._load()
        try:
            result = await self.client.evalsha(sha, len(keys), *keys, *argv)
        except NoScriptError:
            sha = await self._load()
            result = await self.client.evalsha(sha, len(keys), *keys, *argv)
        ids: list[str | None] = []
        for r in result:
            if r is None or r is False or r == 0:
                ids.append(None)
            else:
                ids.append(r.decode() if isinstance(r, bytes) else str(r))
        return ids


# -- leases: one active instance among replicas ---------------------------------------

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    """A leader lease: `SET key owner NX PX ttl`, renewed by its owner, released on exit.

    Whoever holds it is the single active instance of a role (alert evaluation, snapshot
    publishing). A holder that stops renewing loses it after `ttl` seconds.
    """

    def __init__(self, client: AnyRedis, key: str, owner: str, ttl: float = 10.0) -> None:
        self.client = client
        self.key = key
        self.owner = owner
        self.ttl_ms = int(ttl * 1000)
        self.held = False

    async def acquire_or_renew(self) -> bool:
        """Try once; returns whether this owner holds the lease now."""
        if self.held:
            renewed = await self.client.eval(_RENEW_LUA, 1, self.key, self.owner, self.ttl_ms)
            self.held = bool(renewed)
            if self.held:
                return True
        ok = await self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms)
        if not ok:
            current = await self.client.get(self.key)
            if isinstance(current, bytes):
                current = current.decode()
            ok = current == self.owner
        self.held = bool(ok)
        return self.held

    async def release(self) -> None:
        if self.held:
            self.held = False
            try:
                await self.client.eval(_RELEASE_LUA, 1, self.key, self.owner)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                pass  # it expires on its own

    async def holder(self) -> str | None:
        v = await self.client.get(self.key)
        return v.decode() if isinstance(v, bytes) else v


async def ping(client: AnyRedis, within: float = 2.0) -> None:
    """Raise unless Redis answers PING within `within` seconds."""
    await asyncio.wait_for(client.ping(), within)
