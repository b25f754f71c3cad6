"""Exception root of the gateway; every error a client sees carries a stable `code`."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the gateway's errors; `code` is one of the contract's error codes."""

    code = "bad_request"

    def __init__(self, message: str, topic: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.topic = topic


class BadRequest(GatewayError):
    code = "bad_request"


class Forbidden(GatewayError):
    code = "forbidden"


class UnknownTopic(GatewayError):
    code = "unknown_topic"


class TooManySubscriptions(GatewayError):
    code = "too_many_subscriptions"


class HistoryLost(GatewayError):
    code = "history_lost"


class Unauthorized(GatewayError):
    """No valid token: answered with HTTP 401 before any upgrade."""

    code = "unauthorized"


class SnapshotUnavailable(GatewayError):
    """Snapshots are not enabled (`BRIDGE_SNAPSHOT_DSN` unset) or the topic is no table."""

    code = "snapshot_unavailable"


class SnapshotTooLarge(GatewayError):
    """A snapshot limit above `BRIDGE_SNAPSHOT_MAX_ROWS`."""

    code = "snapshot_too_large"


class Unavailable(GatewayError):
    """The gateway cannot serve this right now; retry."""

    code = "unavailable"
