"""The metrics snapshot on Redis: how it is written (metrics API) and read (alerter).

One snapshot is a :class:`~bridge_common.events.MetricsSnapshot` encoded as JSON. It is
written three ways at once: appended to `Channels.snapshot_stream` (field ``snapshot``,
bounded with ``MAXLEN ~``), published on `Channels.snapshot_channel`, and stored under
`Channels.snapshot_latest`. Readers that only want "the current figures" GET the latest
key; readers that must not miss a tick (the alerter's ``for:`` windows) read the stream.
"""

from __future__ import annotations

from typing import Any

from .channels import Channels
from .events import MetricsSnapshot, decode_snapshot, dumps
from .redis import AnyRedis, is_cluster

#: delivery-lag quantiles per hop: commit → relay publish, publish → gateway send,
#: publish → ETL store (bridge_common.lag); each comes once for the worst topic under this
#: name and once per topic as `<name>.<topic>`
LAG_METRICS = frozenset(
    f"{hop}_lag_{q}_seconds"
    for hop in ("notifier.commit", "gateway.delivery", "etl.store")
    for q in ("p50", "p99")
)

#: the metrics the contract promises in every snapshot
CONTRACT_METRICS = frozenset(
    {
        "gateway.connections",
        "audit.events_5m",
        "audit.error_rate_5m",
        "intents.failed_5m",
        "corrections.count_1h",
        "etl.lag_seconds",
        "notifier.lag_seconds",
        "notifier.outbox_backlog",
    }
)

#: every metric the metrics API publishes (the alerter warns on a rule naming another)
SNAPSHOT_METRICS = CONTRACT_METRICS | frozenset(
    {
        *(
            f"audit.{kind}_{window}"
            for kind in ("events", "errors", "error_rate")
            for window in ("5m", "1h", "24h")
        ),
        "intents.total",
        "intents.failed",
        "intents.pending",
        # instances up per service: 0 (not null) when a service is absent
        "gateway.instances",
        "notifier.instances",
        "etl.instances",
        "metrics_api.instances",
        "alerter.instances",
        "services.up",
        "services.down",
        "alerts.firing",
        "source_db.up",
        "target_db.up",
        "etl.timescale_jobs_failing",
        # delivery lag (issue #18), the worst topic over the last minute; null when no
        # event passed that hop then. Each also per topic: `<name>.<topic>` (see below).
        *LAG_METRICS,
    }
)


def known_metric(name: str) -> bool:
    """Whether the metrics API publishes `name` (a fixed name, or a lag metric per topic)."""
    if name in SNAPSHOT_METRICS:
        return True
    # topic names may hold dots themselves: match the fixed part as a prefix
    return any(name.startswith(m + ".") and len(name) > len(m) + 1 for m in LAG_METRICS)


#: field of each stream entry holding the snapshot JSON
SNAPSHOT_FIELD = "snapshot"
#: default bound of the snapshot stream (a day of 10-second snapshots)
DEFAULT_SNAPSHOT_MAXLEN = 8_640


async def publish_snapshot(
    client: AnyRedis,
    channels: Channels,
    snapshot: MetricsSnapshot,
    *,
    maxlen: int = DEFAULT_SNAPSHOT_MAXLEN,
) -> bytes | str:
    """Append to the stream, publish and store as latest; returns the stream entry id.

    On standalone Redis the three writes are one MULTI/EXEC (a reader never sees the
    latest key ahead of the stream). All three names share the namespace's hash tag, so on
    a cluster they live on one shard; there they go out as one pipeline.
    """
    payload = dumps(snapshot)
    pipe: Any = client.pipeline(transaction=not is_cluster(client))
    pipe.xadd(channels.snapshot_stream, {SNAPSHOT_FIELD: payload}, maxlen=maxlen, approximate=True)
    pipe.publish(channels.snapshot_channel, payload)
    pipe.set(channels.snapshot_latest, payload)
    results = await pipe.execute()
    entry_id: bytes | str = results[0]
    return entry_id


def snapshot_from_entry(fields: dict[Any, Any]) -> MetricsSnapshot:
    """Decode one stream entry's fields (bytes or str keys) into a snapshot."""
    raw = fields.get(SNAPSHOT_FIELD)
    if raw is None:
        raw = fields.get(SNAPSHOT_FIELD.encode())
    if raw is None:
        raise ValueError("stream entry has no 'snapshot' field")
    return decode_snapshot(raw)


async def latest_snapshot(client: AnyRedis, channels: Channels) -> MetricsSnapshot | None:
    """The most recently published snapshot, or None when none was published yet."""
    raw = await client.get(channels.snapshot_latest)
    return None if raw is None else decode_snapshot(raw)
