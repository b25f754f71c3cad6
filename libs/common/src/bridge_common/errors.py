"""Exception root of the shared library; each service roots its own tree the same way."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error raised by bridge_common. `code` is stable and safe to show."""

    code = "internal"


class ConfigError(BridgeError):
    code = "config"


class MigrationError(BridgeError):
    code = "migration"
