"""Settings of the metrics API: pools, the snapshot stream bound, the dashboard's gateway."""

from __future__ import annotations

from typing import ClassVar

from bridge_common.settings import BridgeSettings
from pydantic import Field, field_validator


class Settings(BridgeSettings):
    service_name: ClassVar[str] = "metrics_api"
    default_port: ClassVar[int] = 8081

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
    #: token the dashboard page presents to the gateway (`?token=`), when the gateway
    #: requires one: it is visible to whoever can open the dashboard, so give it only the
    #: `audit_logs` and `alerts` topics.
    dashboard_gateway_token: str | None = Field(
        default=None, validation_alias="BRIDGE_DASHBOARD_GATEWAY_TOKEN"
    )
    #: how often the dashboard page polls this API (milliseconds)
    dashboard_poll_ms: int = Field(
        default=3000, ge=500, le=60_000, validation_alias="BRIDGE_DASHBOARD_POLL_MS"
    )

    @field_validator("dashboard_gateway_url")
    @classmethod
    def _check_gateway_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v
