"""Live figures from Redis: service heartbeats (up/down, connections, lag) and firing alerts.

Every service instance writes its heartbeat into the hash `Channels.services`; an
instance that missed three heartbeats is *down*, and once its last heartbeat is older than
`BRIDGE_HEARTBEAT_EXPIRY` it is *gone*: not listed, not counted, and removed from the hash
(`bridge_common.liveness`). Gateway connections come from the
gateways' presence leases (`Channels.presence_replica`: per replica its connections and
its subscriptions per topic, dropped by Redis when the lease runs out) — the same source
presence lists are built from; only when no gateway writes one (older gateways) are the
heartbeats' `connections` summed instead. The notifier's lag and backlog come from the
instance that holds the leader lease; ETL lag is the largest over the ETL workers that
are up. Alert state is the alerter's hash `Channels.alert_state`. Entries that do not
parse are skipped, never fatal.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import msgspec
from bridge_common import liveness
from bridge_common.channels import Channels
from bridge_common.events import Heartbeat, loads
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis

log = get_logger(__name__)

#: services whose absence is an alert of its own; their up instances are counted in the
#: snapshot as `<service>.instances` (gateway, notifier, etl, metrics_api, alerter)
REQUIRED_SERVICES = ("gateway", "notifier", "etl", "metrics_api", "alerter")

#: heartbeats and alert states read per request at most (both hashes are small in practice)
MAX_ENTRIES = 10_000
ALERT_STATES = ("inactive", "pending", "firing", "resolved")


def number(value: Any) -> float | None:
    """A finite number from a heartbeat's status, or None (bools and junk are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _ts_iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Instance:
    hb: Heartbeat
    up: bool
    age: float

    def as_json(self) -> dict[str, Any]:
        hb = self.hb
        return {
            "service": hb.service,
            "instance": hb.instance,
            "state": "up" if self.up else "down",
            "up": self.up,
            "last_heartbeat": _ts_iso(hb.ts),
            "age_seconds": round(self.age, 3),
            "interval_seconds": hb.interval,
            "started_at": _ts_iso(hb.started_at),
            "uptime_seconds": round(max(0.0, hb.ts - hb.started_at), 3),
            "version": hb.version,
            "status": hb.status,
        }


async def _hgetall(client: AnyRedis, key: str) -> dict[bytes, bytes]:
    """HGETALL for small hashes; HSCAN in bounded steps once a hash is large."""
    size = await client.hlen(key)
    if size <= 1000:
        raw: dict[Any, Any] = await client.hgetall(key)
        return raw
    out: dict[Any, Any] = {}
    cursor = 0
    while len(out) < MAX_ENTRIES:
        cursor, chunk = await client.hscan(key, cursor, count=500)
        out.update(cast(dict[Any, Any], chunk))
        if cursor == 0:
            break
    return out


async def instances(
    client: AnyRedis,
    channels: Channels,
    now: float | None = None,
    expiry: float = liveness.DEFAULT_EXPIRY,
) -> list[Instance]:
    """Every service instance with a heartbeat in Redis that has not expired, sorted by
    service and instance. Expired and unreadable entries are removed on the way."""
    now = time.time() if now is None else now
    live_entries, dead = liveness.split(await _hgetall(client, channels.services), now, expiry)
    if dead:
        for field, _ in dead:
            log.info("heartbeat.expired", field=field.decode(errors="replace"))
        await liveness.remove(client, channels.services, dead)
    out = [
        Instance(hb=hb, up=not liveness.is_down(hb, now), age=max(0.0, now - hb.ts))
        for _, hb in live_entries
    ]
    out.sort(key=lambda i: (i.hb.service, i.hb.instance))
    return out


@dataclass(frozen=True, slots=True)
class GatewayPresence:
    """Live gateway connections per replica, and subscriptions per topic per replica."""

    replicas: dict[str, int]
    topics: dict[str, dict[str, int]]

    @property
    def connections(self) -> int:
        return sum(self.replicas.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "replicas": dict(sorted(self.replicas.items())),
            "topics": {
                topic: {"subscriptions": sum(by.values()), "replicas": dict(sorted(by.items()))}
                for topic, by in sorted(self.topics.items())
            },
        }


def _str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def gateway_presence(client: AnyRedis, channels: Channels) -> GatewayPresence:
    """Every gateway replica whose lease is current, with its figures (see module doc)."""
    secs, micros = await client.time()
    now_ms = int(secs) * 1000 + int(micros) // 1000
    names = await client.zrangebyscore(
        channels.presence_replicas, now_ms, "+inf", start=0, num=MAX_ENTRIES
    )
    replicas: dict[str, int] = {}
    topics: dict[str, dict[str, int]] = {}
    for raw_name in names:
        name = _str(raw_name)
        summary: dict[Any, Any] = await client.hgetall(channels.presence_replica(name))
        if not summary:
            continue  # the lease ran out between the two reads
        for raw_field, raw_value in summary.items():
            field = _str(raw_field)
            try:
                value = int(raw_value)
            except ValueError:
                continue
            if field == "#connections":
                replicas[name] = value
            elif field.startswith("t:"):
                topics.setdefault(field[2:], {})[name] = value
        replicas.setdefault(name, 0)
    return GatewayPresence(replicas, topics)


@dataclass(frozen=True, slots=True)
class LiveFigures:
    gateway_connections: int
    gateway_instances: int
    notifier_lag_seconds: float | None
    notifier_outbox_backlog: float | None
    notifier_leader: str | None
    etl_lag_seconds: float | None
    #: TimescaleDB policy jobs whose last run failed (None: no worker on the Timescale path)
    etl_timescale_jobs_failing: float | None
    services_up: int
    services_down: int
    #: service name → instances that are up (services with none are absent)
    instances_up: dict[str, int]
    #: per replica and per topic, when gateways write presence leases
    gateway_presence: GatewayPresence | None = None
    #: hop (`commit`, `delivery`, `store`) → topic → {"p50", "p99"} over the last minute,
    #: the worst instance's figure
    lag: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)


def figures(found: list[Instance], presence: GatewayPresence | None = None) -> LiveFigures:
    up = [i for i in found if i.up]
    gateways = [i for i in up if i.hb.service == "gateway"]
    if presence is not None and presence.replicas:
        connections = presence.connections
    else:
        presence = None
        connections = sum(int(number(i.hb.status.get("connections")) or 0) for i in gateways)
    notifiers = [i for i in up if i.hb.service == "notifier"]
    leaders = [i for i in notifiers if i.hb.status.get("leader") is True]
    # the leader relays; standbys' figures are stale copies — fall back to the worst one
    pick = leaders or notifiers
    lag = _max(number(i.hb.status.get("lag_seconds")) for i in pick)
    backlog = _max(number(i.hb.status.get("outbox_backlog")) for i in pick)
    etls = [i for i in up if i.hb.service in ("etl", "etl_worker")]
    etl_lag = _max(number(i.hb.status.get("lag_seconds")) for i in etls)
    jobs_failing = _max(number(i.hb.status.get("timescale_jobs_failing")) for i in etls)
    return LiveFigures(
        gateway_connections=connections,
        gateway_instances=len(gateways),
        notifier_lag_seconds=lag,
        notifier_outbox_backlog=backlog,
        notifier_leader=leaders[0].hb.instance if leaders else None,
        etl_lag_seconds=etl_lag,
        etl_timescale_jobs_failing=jobs_failing,
        services_up=len(up),
        services_down=len(found) - len(up),
        instances_up=dict(Counter(i.hb.service for i in up)),
        gateway_presence=presence,
        lag={
            "commit": _lag(pick, "commit_lag"),
            "delivery": _lag(gateways, "delivery_lag"),
            "store": _lag(etls, "store_lag"),
        },
    )


def _lag(instances: list[Instance], key: str) -> dict[str, dict[str, float | None]]:
    """Per topic, the worst p50 and p99 any instance reports under `key` in its status
    (instances see different clients and entries: the worst is what someone waited)."""
    out: dict[str, dict[str, float | None]] = {}
    for i in instances:
        per_topic = i.hb.status.get(key)
        if not isinstance(per_topic, dict):
            continue
        for topic, q in per_topic.items():
            if not isinstance(topic, str) or not isinstance(q, dict):
                continue
            have = out.setdefault(topic, {"p50": None, "p99": None})
            for name in ("p50", "p99"):
                have[name] = _max((have[name], number(q.get(name))))
    return out


def _max(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


async def firing_alerts(client: AnyRedis, channels: Channels) -> list[dict[str, Any]]:
    """Alerts in state `firing`, most severe and oldest first."""
    out: list[dict[str, Any]] = []
    for fingerprint, raw in (await _hgetall(client, channels.alert_state)).items():
        try:
            state = loads(raw)
        except msgspec.DecodeError:
            continue
        if not isinstance(state, dict) or state.get("state") != "firing":
            continue
        rule = state.get("rule")
        if not isinstance(rule, str):
            continue
        started = state.get("started_at")
        started_num = number(started)
        out.append(
            {
                "fingerprint": fingerprint.decode(errors="replace"),
                "rule": rule,
                "severity": str(state.get("severity") or "warning"),
                "value": number(state.get("value")),
                "threshold": number(state.get("threshold")),
                "summary": str(state.get("summary") or ""),
                "started_at": (
                    _ts_iso(started_num)
                    if started_num is not None
                    else (started if isinstance(started, str) else None)
                ),
            }
        )
    rank = {"critical": 0, "error": 1, "warning": 2, "info": 3}
    out.sort(key=lambda a: (rank.get(str(a["severity"]), 4), str(a["started_at"] or ""), a["rule"]))
    return out
