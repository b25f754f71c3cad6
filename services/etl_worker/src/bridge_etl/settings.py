"""Settings of the etl service."""

from __future__ import annotations

from bridge_common.settings import BridgeSettings


class Settings(BridgeSettings):
    service_name = "etl"
    default_port = 9102
