"""Settings of the notifier service: the shared contract plus the relay's bounds."""

from __future__ import annotations

from bridge_common.redis import DEFAULT_STREAM_MAXLEN
from bridge_common.settings import BridgeSettings
from pydantic import Field


class Settings(BridgeSettings):
    """`BRIDGE_NOTIFIER_*` tune the relay; `BRIDGE_STREAM_MAXLEN` bounds every topic stream;
    `BRIDGE_HISTORY_RETENTION` (shared) is how long the leader keeps history partitions."""

    service_name = "notifier"
    default_port = 9101

    #: outbox rows read, published and deleted per round trip
    batch_size: int = Field(
        default=1000, ge=1, le=10_000, validation_alias="BRIDGE_NOTIFIER_BATCH_SIZE"
    )
    #: fallback poll when no NOTIFY arrives (seconds)
    poll_interval: float = Field(
        default=1.0, gt=0, le=60, validation_alias="BRIDGE_NOTIFIER_POLL_INTERVAL"
    )
    #: how often a standby tries to take the leader lock (seconds)
    leader_retry_interval: float = Field(
        default=1.0, gt=0, le=60, validation_alias="BRIDGE_NOTIFIER_LEADER_RETRY"
    )
    #: how often backlog and lag are measured (seconds)
    stats_interval: float = Field(
        default=1.0, gt=0, le=300, validation_alias="BRIDGE_NOTIFIER_STATS_INTERVAL"
    )
    #: how often the watched tables are re-registered as topics (seconds)
    topics_refresh_interval: float = Field(
        default=30.0, gt=0, le=3600, validation_alias="BRIDGE_NOTIFIER_TOPICS_REFRESH"
    )
    #: upper bound of event bytes in one publish script call (a batch is split above it)
    max_publish_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=64 * 1024,
        le=256 * 1024 * 1024,
        validation_alias="BRIDGE_NOTIFIER_MAX_PUBLISH_BYTES",
    )
    #: VACUUM the outbox once caught up when it holds this many dead rows (0: leave it to
    #: autovacuum); a drained backlog leaves dead index entries every read must step over
    vacuum_after: int = Field(
        default=50_000, ge=0, le=100_000_000, validation_alias="BRIDGE_NOTIFIER_VACUUM_AFTER"
    )
    #: approximate bound of each topic's Redis Stream (entries)
    stream_maxlen: int = Field(
        default=DEFAULT_STREAM_MAXLEN, ge=1, validation_alias="BRIDGE_STREAM_MAXLEN"
    )
    #: a row whose JSON is larger than this (bytes) is published as an event that says so
    #: (key and size, no data) instead of whole; the history keeps the same
    max_event_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        validation_alias="BRIDGE_MAX_EVENT_BYTES",
    )
