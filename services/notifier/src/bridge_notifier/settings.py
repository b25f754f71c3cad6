"""Settings of the notifier service."""

from __future__ import annotations

from bridge_common.settings import BridgeSettings


class Settings(BridgeSettings):
    service_name = "notifier"
    default_port = 9101
