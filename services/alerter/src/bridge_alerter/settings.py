"""Settings of the alerter service."""

from __future__ import annotations

from bridge_common.settings import BridgeSettings


class Settings(BridgeSettings):
    service_name = "alerter"
    default_port = 9103
