"""Configuration shared by every service: the contract's environment variables, validated once.

Each service subclasses :class:`BridgeSettings` (adding its own fields and port) and calls
:func:`load_settings`, which turns any validation error into one readable line and exit 2.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SOURCE_DSN = "postgresql://localhost/bridge"
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_DURATION_RE = re.compile(r"^\s*(\d{1,9})\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: bounds of BRIDGE_HISTORY_RETENTION: an hour (the partition width) to 30 days
MIN_HISTORY_RETENTION = 3600.0
MAX_HISTORY_RETENTION = 30 * 86400.0


def parse_duration(value: object) -> float:
    """`"90m"`, `"24h"`, `"7d"`, `"30s"` (or a number of seconds) → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(int(m.group(1)) * _UNIT_SECONDS[m.group(2)])
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError("a duration such as 90m, 24h or 7d")


def port_variable(service_name: str) -> str:
    """`BRIDGE_<SERVICE>_PORT` of a service (`metrics_api` → `BRIDGE_METRICS_API_PORT`)."""
    return f"BRIDGE_{service_name.upper().replace('-', '_')}_PORT"


class _ServicePortSource(PydanticBaseSettingsSource):
    """`port` from `BRIDGE_<SERVICE>_PORT`: the environment first, then the `.env` file.

    Nothing else sets `port` (an explicit `--port` comes in as an init argument and wins);
    in particular no `BRIDGE_PORT` that would move every service at once.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: PydanticBaseSettingsSource,
        dotenv: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._sources = [s for s in (env, dotenv) if isinstance(s, EnvSettingsSource)]

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for the whole model

    def __call__(self) -> dict[str, Any]:
        service = getattr(self.settings_cls, "service_name", "bridge")
        name = port_variable(service)
        for source in self._sources:
            key = name if source.case_sensitive else name.lower()
            value = source.env_vars.get(key)
            if value is not None and value != "":
                return {"port": value}
        return {}


class _WithoutPort(PydanticBaseSettingsSource):
    """An environment / `.env` source that never supplies `port` (see `_ServicePortSource`)."""

    def __init__(self, inner: PydanticBaseSettingsSource) -> None:
        super().__init__(inner.settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self._inner()
        data.pop("port", None)
        return data


class BridgeSettings(BaseSettings):
    """Settings every Bridge Lite process understands."""

    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    #: service name used for logs, heartbeats and the `BRIDGE_<SERVICE>_PORT` variable
    service_name: ClassVar[str] = "bridge"
    default_port: ClassVar[int] = 0

    source_dsn: str = Field(
        default=DEFAULT_SOURCE_DSN,
        validation_alias=AliasChoices("BRIDGE_SOURCE_DSN", "POSTGRES_DSN", "DATABASE_URL"),
    )
    target_dsn: str | None = Field(default=None, validation_alias="BRIDGE_TARGET_DSN")
    #: where the gateways read the event history: the source database (default) or a
    #: streaming replica of it; the notifier always writes it in the source database
    history_dsn: str | None = Field(default=None, validation_alias="BRIDGE_HISTORY_DSN")
    #: how long published events stay in the history (seconds; `90m`, `24h`, `7d`)
    history_retention: float = Field(
        default=86400.0,
        ge=MIN_HISTORY_RETENTION,
        le=MAX_HISTORY_RETENTION,
        validation_alias="BRIDGE_HISTORY_RETENTION",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="BRIDGE_REDIS_URL")
    redis_cluster_nodes: str | None = Field(
        default=None, validation_alias="BRIDGE_REDIS_CLUSTER_NODES"
    )
    #: Redis ACL user and password (standalone and Cluster); credentials in the URL win
    redis_username: str | None = Field(default=None, validation_alias="BRIDGE_REDIS_USERNAME")
    redis_password: SecretStr | None = Field(default=None, validation_alias="BRIDGE_REDIS_PASSWORD")
    #: TLS to Redis (standalone: same as a rediss:// URL; Cluster: every node)
    redis_tls: bool = Field(default=False, validation_alias="BRIDGE_REDIS_TLS")
    #: CA bundle that signed the Redis servers' certificates (unset: the system's CAs)
    redis_tls_ca_file: str | None = Field(default=None, validation_alias="BRIDGE_REDIS_TLS_CA_FILE")
    namespace: str = Field(default="bridge", validation_alias="BRIDGE_NAMESPACE")
    log_format: Literal["json", "console"] = Field(
        default="json", validation_alias="BRIDGE_LOG_FORMAT"
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", validation_alias="BRIDGE_LOG_LEVEL"
    )
    snapshot_interval: float = Field(
        default=10.0, gt=0, le=3600, validation_alias="BRIDGE_SNAPSHOT_INTERVAL"
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, le=300, validation_alias="BRIDGE_HEARTBEAT_INTERVAL"
    )
    #: seconds after its last heartbeat a crashed instance is removed from the services list
    #: (until then it shows as `down`); never less than 6 heartbeat intervals
    heartbeat_expiry: float = Field(
        default=300.0, ge=1, le=7 * 86_400, validation_alias="BRIDGE_HEARTBEAT_EXPIRY"
    )
    host: str = Field(default="0.0.0.0", validation_alias="BRIDGE_HOST")  # noqa: S104
    port: int = Field(default=0, ge=0, le=65535)
    shutdown_timeout: float = Field(
        default=10.0, gt=0, le=600, validation_alias="BRIDGE_SHUTDOWN_TIMEOUT"
    )
    # -- limits on every HTTP port (see bridge_common.http_guard) ------------------------
    #: request line + headers; a longer head is answered 431
    http_max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, le=1024 * 1024, validation_alias="BRIDGE_HTTP_MAX_HEADER_BYTES"
    )
    #: seconds a connection has to deliver its request head (also the idle limit before it)
    http_header_timeout: float = Field(
        default=10.0, gt=0, le=300, validation_alias="BRIDGE_HTTP_HEADER_TIMEOUT"
    )
    #: connections still waiting for their request head, in total and from one address
    http_max_pending: int = Field(
        default=4096, ge=1, le=1_000_000, validation_alias="BRIDGE_HTTP_MAX_PENDING"
    )
    http_max_pending_per_ip: int = Field(
        default=1024, ge=1, le=1_000_000, validation_alias="BRIDGE_HTTP_MAX_PENDING_PER_IP"
    )
    # -- OpenTelemetry (bridge_common.tracing): the standard variables, no BRIDGE_ prefix ---
    #: OTLP/HTTP collector base URL (spans go to `<url>/v1/traces`); set → spans exported
    otel_endpoint: str | None = Field(default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    #: the full traces URL, when it is not `<OTEL_EXPORTER_OTLP_ENDPOINT>/v1/traces`
    otel_traces_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    #: `otlp`, `console` (both, comma-separated) or `none`; unset: `otlp` when an endpoint is
    otel_traces_exporter: str | None = Field(default=None, validation_alias="OTEL_TRACES_EXPORTER")
    #: `true`: no spans whatever else is set
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `.env` behaves like the environment for the port too (it used to be read from
        # os.environ only): the per-service variable is looked up in both, in that order
        return (
            init_settings,
            _ServicePortSource(settings_cls, env_settings, dotenv_settings),
            _WithoutPort(env_settings),
            _WithoutPort(dotenv_settings),
            file_secret_settings,
        )

    @field_validator("history_retention", mode="before")
    @classmethod
    def _parse_retention(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("history_dsn", mode="before")
    @classmethod
    def _blank_history_dsn(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("source_dsn", "target_dsn", "history_dsn")
    @classmethod
    def _check_dsn(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v.startswith(("postgresql://", "postgres://")) and "=" not in v:
            raise ValueError("must be a postgresql:// URL or a libpq key=value string")
        return v

    @field_validator("otel_endpoint", "otel_traces_endpoint", "otel_traces_exporter", mode="before")
    @classmethod
    def _blank_otel(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("otel_endpoint", "otel_traces_endpoint")
    @classmethod
    def _check_otel_endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        scheme, sep, rest = v.partition("://")
        if scheme not in ("http", "https") or not sep or not rest.split("/")[0]:
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("otel_traces_exporter")
    @classmethod
    def _check_otel_exporter(cls, v: str | None) -> str | None:
        if v is None:
            return v
        names = [n.strip().lower() for n in v.split(",")]
        bad = [n for n in names if n not in ("otlp", "console", "none")]
        if bad:
            raise ValueError(f"unsupported exporter {bad[0]!r} (use otlp, console or none)")
        return ",".join(names)

    def otel_env(self) -> dict[str, str]:
        """The OpenTelemetry settings as the standard variables (for `tracing.configure`),
        whether they came from the environment or from `.env`."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otel_endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.otel_traces_endpoint,
            "OTEL_TRACES_EXPORTER": self.otel_traces_exporter,
            "OTEL_SDK_DISABLED": "true" if self.otel_sdk_disabled else None,
        }
        return {k: v for k, v in env.items() if v is not None}

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @field_validator("redis_cluster_nodes")
    @classmethod
    def _check_cluster_nodes(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        for node in v.split(","):
            host, sep, port = node.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{node.strip()!r} is not host:port")
        return v

    @field_validator("redis_username", "redis_tls_ca_file")
    @classmethod
    def _empty_is_unset(cls, v: str | None) -> str | None:
        return v if v else None

    @field_validator("redis_tls_ca_file")
    @classmethod
    def _ca_file_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"{v!r} is not a readable file")
        return v

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, v: str) -> str:
        if not _NAMESPACE_RE.match(v):
            raise ValueError("1-64 characters of letters, digits, '_', '.', '-'")
        return v

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _service_port(cls, data: Any) -> Any:
        """The service's default port when neither `--port` nor its variable set one."""
        if isinstance(data, dict) and data.get("port") is None:
            data = dict(data)
            data["port"] = cls.default_port
        return data

    @property
    def effective_target_dsn(self) -> str:
        """The time-series database; the source database when none is configured."""
        return self.target_dsn or self.source_dsn

    @property
    def effective_history_dsn(self) -> str:
        """Where the history is read; the source database when none is configured."""
        return self.history_dsn or self.source_dsn

    @property
    def cluster_nodes(self) -> list[tuple[str, int]]:
        if not self.redis_cluster_nodes:
            return []
        out = []
        for node in self.redis_cluster_nodes.split(","):
            host, _, port = node.strip().rpartition(":")
            out.append((host, int(port)))
        return out


S = TypeVar("S", bound=BridgeSettings)


def format_validation_error(exc: ValidationError, cls: type[BridgeSettings]) -> str:
    """One readable line naming every bad variable by its environment name."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        parts.append(f"{env_name(cls, loc)}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def env_name(cls: type[BridgeSettings], field: str) -> str:
    """The environment variable(s) behind a settings field, for error messages."""
    if field == "port":
        return f"{port_variable(cls.service_name)} (or --port)"
    if field in ("source_dsn", "BRIDGE_SOURCE_DSN"):
        return "BRIDGE_SOURCE_DSN (or POSTGRES_DSN / DATABASE_URL)"
    info = cls.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, str):
        return alias
    if field.startswith("BRIDGE_"):
        return field
    return f"BRIDGE_{field.upper()}"


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment (and `.env`); exit 2 with one line on error."""
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        fail_config(
            f"{cls.service_name}: invalid configuration: {format_validation_error(exc, cls)}"
        )


def fail_config(message: str) -> NoReturn:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(2)
