"""The overview: every figure ops look at first, and the snapshot metrics derived from it.

`collect` gathers the source database (intents), the target database (audit windows),
heartbeats and alerts concurrently. `snapshot_metrics` flattens the result into the named
metrics of the contract, the ones the alerter evaluates; a figure whose source did not
answer is `None` (unknown), never a made-up 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from bridge_common import liveness
from bridge_common.channels import Channels
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis
from psycopg_pool import AsyncConnectionPool

from . import audit, intents, live
from .audit import iso
from .errors import Unavailable
from .live import Instance, LiveFigures

log = get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the figures come from; one per process."""

    source_pool: AsyncConnectionPool
    target_pool: AsyncConnectionPool
    redis: AnyRedis
    channels: Channels
    query_timeout: float
    #: `BRIDGE_HEARTBEAT_EXPIRY`: instances silent longer than this are gone
    heartbeat_expiry: float = liveness.DEFAULT_EXPIRY

    async def bounded(self, what: str, aw: Awaitable[T]) -> T:
        """Await `aw` within the query timeout; a slow or broken database → Unavailable."""
        try:
            return await asyncio.wait_for(aw, self.query_timeout)
        except TimeoutError:
            raise Unavailable(f"{what}: no answer within {self.query_timeout:g}s") from None
        except Unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - any driver error means "not answering"
            log.warning("query.failed", what=what, error=f"{type(exc).__name__}: {exc}")
            raise Unavailable(f"{what}: {type(exc).__name__}") from exc


@dataclass(slots=True)
class Overview:
    ts: datetime
    intents: intents.IntentCounts | None
    audit: audit.AuditWindows | None
    live: LiveFigures | None
    instances: list[Instance]
    alerts: list[dict[str, Any]] | None
    errors: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        lf = self.live
        return {
            "ts": iso(self.ts),
            "intents": None
            if self.intents is None
            else {
                "by_status": self.intents.by_status,
                "total": self.intents.total,
                "failed_5m": self.intents.failed_5m,
            },
            "audit": None
            if self.audit is None
            else {name: w.as_json() for name, w in self.audit.windows.items()},
            "corrections": None if self.audit is None else {"count_1h": self.audit.corrections_1h},
            "gateway": None
            if lf is None
            else {
                "connections": lf.gateway_connections,
                "instances": lf.gateway_instances,
                # per replica and per topic: from the gateways' presence leases
                **({} if lf.gateway_presence is None else lf.gateway_presence.as_json()),
            },
            "notifier": None
            if lf is None
            else {
                "lag_seconds": lf.notifier_lag_seconds,
                "outbox_backlog": lf.notifier_outbox_backlog,
                "leader": lf.notifier_leader,
            },
            "etl": None if lf is None else {"lag_seconds": lf.etl_lag_seconds},
            # per hop, per topic: {"p50", "p99"} seconds over the last minute
            "lag": None if lf is None else lf.lag,
            "services": None
            if lf is None
            else {
                "up": lf.services_up,
                "down": lf.services_down,
                "instances_up": dict(lf.instances_up),
            },
            "alerts": None
            if self.alerts is None
            else {"firing": self.alerts, "count": len(self.alerts)},
            "errors": self.errors,
        }


async def collect(src: Sources, now: datetime | None = None) -> Overview:
    """Everything at once; a part whose source fails is None and named in `errors`."""
    now = now or datetime.now(UTC)
    results = await asyncio.gather(
        src.bounded("source database", intents.counts(src.source_pool, now)),
        src.bounded("target database", audit.windows(src.target_pool, now)),
        src.bounded(
            "redis", live.instances(src.redis, src.channels, now.timestamp(), src.heartbeat_expiry)
        ),
        src.bounded("redis", live.firing_alerts(src.redis, src.channels)),
        src.bounded("redis", live.gateway_presence(src.redis, src.channels)),
        return_exceptions=True,
    )
    errors: dict[str, str] = {}
    values: list[Any] = []
    names = ("intents", "audit", "services", "alerts", "presence")
    for name, result in zip(names, results, strict=True):
        if isinstance(result, Unavailable):
            errors[name] = str(result)
            values.append(None)
        elif isinstance(result, BaseException):
            raise result
        else:
            values.append(result)
    intent_counts, windows, found, alerts, presence = values
    # presence is a refinement of the heartbeats: without it the heartbeats still count
    errors.pop("presence", None)
    return Overview(
        ts=now,
        intents=intent_counts,
        audit=windows,
        live=None if found is None else live.figures(found, presence),
        instances=found or [],
        alerts=alerts,
        errors=errors,
    )


def snapshot_metrics(ov: Overview) -> dict[str, float | None]:
    """The snapshot's named metrics (see docs/api.md); None where the source was down."""
    m: dict[str, float | None] = {}
    w = ov.audit.windows if ov.audit is not None else None
    for name in ("5m", "1h", "24h"):
        counts = w[name] if w is not None else None
        m[f"audit.events_{name}"] = None if counts is None else float(counts.events)
        m[f"audit.errors_{name}"] = None if counts is None else float(counts.errors)
        m[f"audit.error_rate_{name}"] = None if counts is None else counts.error_rate
    m["corrections.count_1h"] = None if ov.audit is None else float(ov.audit.corrections_1h)
    ic = ov.intents
    m["intents.failed_5m"] = None if ic is None else float(ic.failed_5m)
    m["intents.total"] = None if ic is None else float(ic.total)
    m["intents.failed"] = None if ic is None else float(ic.by_status.get("failed", 0))
    m["intents.pending"] = None if ic is None else float(ic.by_status.get("pending", 0))
    lf = ov.live
    m["gateway.connections"] = None if lf is None else float(lf.gateway_connections)
    m["notifier.lag_seconds"] = None if lf is None else lf.notifier_lag_seconds
    m["notifier.outbox_backlog"] = None if lf is None else lf.notifier_outbox_backlog
    m["etl.lag_seconds"] = None if lf is None else lf.etl_lag_seconds
    # presence: how many instances of each service are up (0 when none is, unlike the
    # figures those services report, which are null then) — what "absent" rules read
    for service in live.REQUIRED_SERVICES:
        m[f"{service}.instances"] = None if lf is None else float(lf.instances_up.get(service, 0))
    m["etl.timescale_jobs_failing"] = None if lf is None else lf.etl_timescale_jobs_failing
    m["services.up"] = None if lf is None else float(lf.services_up)
    m["services.down"] = None if lf is None else float(lf.services_down)
    m["alerts.firing"] = None if ov.alerts is None else float(len(ov.alerts))
    for hop, name in (
        ("commit", "notifier.commit"),
        ("delivery", "gateway.delivery"),
        ("store", "etl.store"),
    ):
        per_topic = {} if lf is None else lf.lag.get(hop, {})
        for q in ("p50", "p99"):
            metric = f"{name}_lag_{q}_seconds"
            present = [x for v in per_topic.values() if (x := v[q]) is not None]
            m[metric] = max(present) if present else None
            for topic, v in per_topic.items():
                m[f"{metric}.{topic}"] = v[q]
    m["source_db.up"] = 0.0 if "intents" in ov.errors else 1.0
    m["target_db.up"] = 0.0 if "audit" in ov.errors else 1.0
    return m
