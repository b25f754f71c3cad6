"""Settings of the gateway service: auth, limits per connection, heartbeats."""

from __future__ import annotations

import os
from typing import Literal

from bridge_common.tokens import JwtSettings
from pydantic import Field, field_validator, model_validator

from .cors import serialize_origin


class Settings(JwtSettings):
    """The gateway's settings; the token ones (`BRIDGE_JWT_*`) are shared with the metrics
    API through `JwtSettings`."""

    service_name = "gateway"
    default_port = 8080

    auth: Literal["jwt", "disabled"] = Field(default="jwt", validation_alias="BRIDGE_AUTH")
    #: comma-separated browser origins allowed to connect; empty = any origin
    allowed_origins: str = Field(default="", validation_alias="BRIDGE_GATEWAY_ALLOWED_ORIGINS")
    #: largest inbound WebSocket message (bytes); larger ones close with 1009
    max_frame_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        le=16 * 1024 * 1024,
        validation_alias="BRIDGE_GATEWAY_MAX_FRAME_BYTES",
    )
    max_subscriptions: int = Field(
        default=64, ge=1, le=10_000, validation_alias="BRIDGE_GATEWAY_MAX_SUBSCRIPTIONS"
    )
    max_connections: int = Field(
        default=50_000, ge=1, le=1_000_000, validation_alias="BRIDGE_GATEWAY_MAX_CONNECTIONS"
    )
    #: sustained client messages per second, and the burst allowed above it
    rate_limit: float = Field(
        default=50.0, gt=0, le=100_000, validation_alias="BRIDGE_GATEWAY_RATE_LIMIT"
    )
    rate_burst: int = Field(
        default=200, ge=1, le=1_000_000, validation_alias="BRIDGE_GATEWAY_RATE_BURST"
    )
    #: outgoing buffer per connection: a client with more events waiting than
    #: SEND_BUFFER_MESSAGES, or whose backlog stays above SEND_BUFFER_BYTES for
    #: SLOW_READER_GRACE seconds, or exceeds SEND_BUFFER_MAX_BYTES before a new frame, is
    #: cut off (1013); one frame of any size never trips a bound by itself
    send_buffer_messages: int = Field(
        default=2_000, ge=2, le=1_000_000, validation_alias="BRIDGE_GATEWAY_SEND_BUFFER_MESSAGES"
    )
    send_buffer_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        le=1 << 30,
        validation_alias="BRIDGE_GATEWAY_SEND_BUFFER_BYTES",
    )
    slow_reader_grace: float = Field(
        default=5.0, gt=0, le=600, validation_alias="BRIDGE_GATEWAY_SLOW_READER_GRACE"
    )
    send_buffer_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=1 << 34,
        validation_alias="BRIDGE_GATEWAY_SEND_BUFFER_MAX_BYTES",
    )
    ping_interval: float = Field(
        default=20.0, gt=0, le=3600, validation_alias="BRIDGE_GATEWAY_PING_INTERVAL"
    )
    ping_timeout: float = Field(
        default=20.0, gt=0, le=3600, validation_alias="BRIDGE_GATEWAY_PING_TIMEOUT"
    )
    sse_heartbeat: float = Field(
        default=15.0, gt=0, le=15.0, validation_alias="BRIDGE_GATEWAY_SSE_HEARTBEAT"
    )
    #: stream entries read per XRANGE while replaying
    replay_batch: int = Field(
        default=500, ge=1, le=10_000, validation_alias="BRIDGE_GATEWAY_REPLAY_BATCH"
    )
    #: connections to the history database (BRIDGE_HISTORY_DSN) shared by every replay
    history_pool: int = Field(
        default=4, ge=1, le=64, validation_alias="BRIDGE_GATEWAY_HISTORY_POOL"
    )
    #: where snapshots are read (the source database or a replica); unset: no snapshots
    snapshot_dsn: str | None = Field(default=None, validation_alias="BRIDGE_SNAPSHOT_DSN")
    #: rows one snapshot may return (also the largest `limit` a client may ask for)
    snapshot_max_rows: int = Field(
        default=10_000, ge=1, le=1_000_000, validation_alias="BRIDGE_SNAPSHOT_MAX_ROWS"
    )
    #: snapshots read at once by this gateway (each holds one database connection)
    snapshot_concurrency: int = Field(
        default=4, ge=1, le=64, validation_alias="BRIDGE_GATEWAY_SNAPSHOT_CONCURRENCY"
    )
    #: statement timeout of every snapshot query (seconds)
    snapshot_timeout: float = Field(
        default=10.0, gt=0, le=600, validation_alias="BRIDGE_GATEWAY_SNAPSHOT_TIMEOUT"
    )
    #: first delay before reconnecting to Redis (doubles up to 5 s)
    redis_retry: float = Field(
        default=0.1, gt=0, le=60, validation_alias="BRIDGE_GATEWAY_REDIS_RETRY"
    )

    #: presence entries a frame or `GET /presence/{topic}` lists per topic at most (the
    #: counts stay exact past it; the list then says `"truncated": true`)
    presence_max_list: int = Field(
        default=1_000, ge=1, le=100_000, validation_alias="BRIDGE_PRESENCE_MAX_LIST"
    )
    #: largest token `info` claim (encoded JSON bytes) shown in presence; larger → null
    presence_max_info_bytes: int = Field(
        default=1_024, ge=0, le=65_536, validation_alias="BRIDGE_PRESENCE_MAX_INFO_BYTES"
    )
    #: processes serving the port (SO_REUSEPORT), each a whole gateway with its own Redis
    #: subscriber and heartbeat: a number, or `auto` for one per CPU core available
    workers: int = Field(default=1, ge=1, le=256, validation_alias="BRIDGE_GATEWAY_WORKERS")

    @field_validator("snapshot_dsn", mode="before")
    @classmethod
    def _blank_snapshot_dsn(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, str) and not v.startswith(("postgres://", "postgresql://", "host=")):
            raise ValueError("a PostgreSQL URL (postgresql://…) or key=value conninfo")
        return v

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, v: object) -> object:
        if isinstance(v, str) and v.strip().lower() == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return v

    @model_validator(mode="after")
    def _buffer_bounds(self) -> Settings:
        if self.send_buffer_max_bytes < self.send_buffer_bytes:
            raise ValueError(
                "BRIDGE_GATEWAY_SEND_BUFFER_MAX_BYTES must be at least "
                "BRIDGE_GATEWAY_SEND_BUFFER_BYTES"
            )
        return self

    @field_validator("auth", mode="before")
    @classmethod
    def _lower_auth(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, v: str) -> str:
        for entry in v.split(","):
            if entry.strip() and serialize_origin(entry, strict=False) is None:
                raise ValueError(f"{entry.strip()!r} is not an origin (scheme://host[:port])")
        return v

    @property
    def origins(self) -> frozenset[str]:
        out = set()
        for entry in self.allowed_origins.split(","):
            serialized = serialize_origin(entry, strict=False) if entry.strip() else None
            if serialized is not None:
                out.add(serialized)
        return frozenset(out)
