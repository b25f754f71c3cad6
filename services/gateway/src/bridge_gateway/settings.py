"""Settings of the gateway service."""

from __future__ import annotations

from bridge_common.settings import BridgeSettings


class Settings(BridgeSettings):
    service_name = "gateway"
    default_port = 8080
