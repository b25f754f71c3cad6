"""Settings of the gateway service: auth, limits per connection, heartbeats."""

from __future__ import annotations

import re
from typing import Literal

from bridge_common.jwt_secret import secret_problem
from bridge_common.settings import BridgeSettings
from pydantic import Field, SecretStr, field_validator, model_validator

from .cors import serialize_origin

_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h|d)?")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Settings(BridgeSettings):
    service_name = "gateway"
    default_port = 8080

    jwt_secret: SecretStr | None = Field(default=None, validation_alias="BRIDGE_JWT_SECRET")
    auth: Literal["jwt", "disabled"] = Field(default="jwt", validation_alias="BRIDGE_AUTH")
    #: comma-separated secrets still accepted during a rotation (tokens are minted with
    #: BRIDGE_JWT_SECRET; these only verify tokens issued before the switch)
    jwt_previous_secrets: SecretStr | None = Field(
        default=None, validation_alias="BRIDGE_JWT_PREVIOUS_SECRETS"
    )
    #: tokens whose `exp` lies further ahead are refused: seconds, or `90m`, `24h`, `7d`
    jwt_max_lifetime: float = Field(
        default=24 * 3600.0, gt=0, le=366 * 86400, validation_alias="BRIDGE_JWT_MAX_LIFETIME"
    )
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

    @field_validator("snapshot_dsn", mode="before")
    @classmethod
    def _blank_snapshot_dsn(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, str) and not v.startswith(("postgres://", "postgresql://", "host=")):
            raise ValueError("a PostgreSQL URL (postgresql://…) or key=value conninfo")
        return v

    @field_validator("jwt_secret")
    @classmethod
    def _check_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value():
            return None  # "not set" is reported by the command, naming BRIDGE_AUTH=disabled
        problem = secret_problem(v.get_secret_value())
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("jwt_previous_secrets")
    @classmethod
    def _check_previous(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        for i, item in enumerate(v.get_secret_value().split(",")):
            problem = secret_problem(item.strip()) if item.strip() else None
            if problem:
                raise ValueError(f"entry {i + 1} {problem}")
        return v

    @model_validator(mode="after")
    def _buffer_bounds(self) -> Settings:
        if self.send_buffer_max_bytes < self.send_buffer_bytes:
            raise ValueError(
                "BRIDGE_GATEWAY_SEND_BUFFER_MAX_BYTES must be at least "
                "BRIDGE_GATEWAY_SEND_BUFFER_BYTES"
            )
        return self

    @field_validator("jwt_max_lifetime", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        if isinstance(v, str):
            m = _DURATION_RE.fullmatch(v.strip())
            if m is None:
                raise ValueError("a duration such as 3600, 90m, 24h or 7d")
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
        return v

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
