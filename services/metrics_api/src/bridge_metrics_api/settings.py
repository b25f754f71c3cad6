"""Settings of the metrics_api service."""

from __future__ import annotations

from bridge_common.settings import BridgeSettings


class Settings(BridgeSettings):
    service_name = "metrics_api"
    default_port = 8081
