"""Settings of the alerter service: where the rules are and how hard to try delivering."""

from __future__ import annotations

from bridge_common.settings import BridgeSettings
from pydantic import Field, field_validator

from .destinations import DEFAULT_ALLOWED, IPNetwork, parse_networks


class Settings(BridgeSettings):
    service_name = "alerter"
    default_port = 9103

    #: the rules file (`--rules` overrides)
    alert_rules: str = Field(default="alerts.yaml", validation_alias="BRIDGE_ALERT_RULES")
    #: leader lease: one active evaluator among replicas; a dead leader is replaced after this
    lease_ttl: float = Field(
        default=10.0, gt=0.2, le=300, validation_alias="BRIDGE_ALERTER_LEASE_TTL"
    )
    #: a firing alert whose condition clears stays firing this long before it resolves; if
    #: the condition returns meanwhile it is the same incident (no flapping storm)
    resolve_grace: float = Field(
        default=60.0, ge=0, le=86_400, validation_alias="BRIDGE_ALERTER_RESOLVE_GRACE"
    )
    #: a notification not delivered within this age is dropped (logged, counted)
    delivery_max_age: float = Field(
        default=3600.0, gt=0, le=7 * 86_400, validation_alias="BRIDGE_ALERTER_DELIVERY_MAX_AGE"
    )
    #: loopback / link-local / other special addresses webhooks may still reach
    #: (comma-separated IPs or CIDRs; `none` for nothing); see bridge_alerter.destinations
    allowed_networks: str = Field(
        default=DEFAULT_ALLOWED, validation_alias="BRIDGE_ALERTER_ALLOWED_NETWORKS"
    )
    #: timeout of every HTTP call to Slack / a webhook
    http_timeout: float = Field(
        default=10.0, gt=0, le=300, validation_alias="BRIDGE_ALERTER_HTTP_TIMEOUT"
    )
    #: first retry delay; doubles per attempt (full jitter) up to `retry_max_delay`
    retry_base_delay: float = Field(
        default=1.0, gt=0, le=600, validation_alias="BRIDGE_ALERTER_RETRY_BASE_DELAY"
    )
    retry_max_delay: float = Field(
        default=60.0, gt=0, le=3600, validation_alias="BRIDGE_ALERTER_RETRY_MAX_DELAY"
    )
    #: minimum spacing of messages to one Slack incoming webhook (Slack allows ~1/s)
    slack_min_interval: float = Field(
        default=1.0, ge=0, le=60, validation_alias="BRIDGE_ALERTER_SLACK_MIN_INTERVAL"
    )
    #: bound of each channel's in-memory queue (the Redis outbox holds the rest)
    channel_queue_size: int = Field(
        default=1000, ge=1, le=100_000, validation_alias="BRIDGE_ALERTER_QUEUE_SIZE"
    )
    #: how often the leader rescans the Redis outbox for notifications not yet queued
    outbox_sweep_interval: float = Field(
        default=2.0, gt=0, le=300, validation_alias="BRIDGE_ALERTER_SWEEP_INTERVAL"
    )

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, v: str) -> str:
        parse_networks(v)
        return v

    @property
    def allowed(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.allowed_networks)
