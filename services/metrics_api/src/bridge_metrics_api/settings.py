"""Settings of the metrics API: who may ask (ops tokens), pools, the snapshot stream bound,
the dashboard's gateway."""

from __future__ import annotations

from typing import ClassVar, Literal

from bridge_common.tokens import JwtSettings
from pydantic import Field, field_validator


class Settings(JwtSettings):
    service_name: ClassVar[str] = "metrics_api"
    default_port: ClassVar[int] = 8081

    #: `jwt`: every route but /healthz, /readyz, /metrics needs an ops token (a JWT signed
    #: with BRIDGE_JWT_SECRET whose `scope` contains `ops`) or the session cookie made from
    #: one; `disabled`: anyone who reaches the port may ask (put something else in front)
    metrics_auth: Literal["jwt", "disabled"] = Field(
        default="jwt", validation_alias="BRIDGE_METRICS_AUTH"
    )
    #: lifetime of the gateway tokens handed to the dashboard (`/api/v1/gateway-token`);
    #: the page fetches a fresh one before this runs out
    metrics_gateway_token_ttl: float = Field(
        default=300.0, ge=10, le=600, validation_alias="BRIDGE_METRICS_GATEWAY_TOKEN_TTL"
    )
    #: comma-separated proxy addresses (or `*`) whose X-Forwarded-Proto/-For are believed;
    #: empty: forwarded headers are ignored and the session cookie is `Secure` only when
    #: this process itself is reached over https
    metrics_forwarded_allow_ips: str = Field(
        default="", validation_alias="BRIDGE_METRICS_FORWARDED_ALLOW_IPS"
    )

    #: largest connection pool per database (source and target)
    db_pool_size: int = Field(default=8, ge=1, le=100, validation_alias="BRIDGE_METRICS_DB_POOL")
    #: a query slower than this is cancelled and the request answers 503
    query_timeout: float = Field(
        default=5.0, gt=0, le=120, validation_alias="BRIDGE_METRICS_QUERY_TIMEOUT"
    )
    #: the overview is computed at most once per this many seconds, shared by all callers
    overview_cache_ttl: float = Field(
        default=1.0, ge=0, le=60, validation_alias="BRIDGE_METRICS_CACHE_TTL"
    )
    #: timeline buckets that ended over 2 minutes ago are reused for this many seconds
    bucket_cache_ttl: float = Field(
        default=30.0, ge=0, le=3600, validation_alias="BRIDGE_METRICS_BUCKET_CACHE_TTL"
    )
    #: how many days of audit counts the rollups keep (the ETL's
    #: `BRIDGE_ETL_ROLLUP_RETENTION_DAYS`, the continuous aggregates' retention policy);
    #: timeline and corrections ranges starting earlier answer 422 `beyond_retention`
    rollup_retention_days: int = Field(
        default=400, ge=1, le=36_500, validation_alias="BRIDGE_METRICS_ROLLUP_RETENTION_DAYS"
    )
    #: bound of the snapshot stream (entries, approximate)
    snapshot_maxlen: int = Field(
        default=8640, ge=10, le=10_000_000, validation_alias="BRIDGE_SNAPSHOT_MAXLEN"
    )
    #: the gateway's public base URL (http[s]://host:port, as browsers reach it); the
    #: dashboard page then imports its `client.js` and listens to live events through it.
    #: Unset (or client.js not loadable): the dashboard polls this API only.
    dashboard_gateway_url: str | None = Field(
        default=None, validation_alias="BRIDGE_DASHBOARD_GATEWAY_URL"
    )
    #: removed: the page now gets short-lived gateway tokens from `/api/v1/gateway-token`;
    #: a long-lived token left in the configuration is refused rather than ignored
    dashboard_gateway_token: str | None = Field(
        default=None, validation_alias="BRIDGE_DASHBOARD_GATEWAY_TOKEN"
    )
    #: how often the dashboard page polls this API (milliseconds)
    dashboard_poll_ms: int = Field(
        default=3000, ge=500, le=60_000, validation_alias="BRIDGE_DASHBOARD_POLL_MS"
    )

    @field_validator("dashboard_gateway_token")
    @classmethod
    def _no_static_token(cls, v: str | None) -> None:
        if v is not None and v.strip():
            raise ValueError(
                "no longer supported: the dashboard gets short-lived gateway tokens from "
                "/api/v1/gateway-token (signed with BRIDGE_JWT_SECRET); remove this variable"
            )
        return None

    @field_validator("metrics_auth", mode="before")
    @classmethod
    def _lower_auth(cls, v: object) -> object:
        return v.lower().strip() if isinstance(v, str) else v

    @property
    def proxies(self) -> list[str]:
        return [p.strip() for p in self.metrics_forwarded_allow_ips.split(",") if p.strip()]

    @field_validator("dashboard_gateway_url")
    @classmethod
    def _check_gateway_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v
