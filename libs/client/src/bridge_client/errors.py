"""The client's exception tree: everything it raises derives from `BridgeClientError`."""

from __future__ import annotations


class BridgeClientError(Exception):
    """Root of every error the Bridge Lite client raises."""


class ClientClosed(BridgeClientError):
    """The client (or the subscription) was closed, or was never started."""


class Unauthorized(BridgeClientError):
    """The gateway refused the token (HTTP 401/403) and no fresh token helped."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        super().__init__(message or f"gateway refused the token (HTTP {status})")


class SubscriptionRejected(BridgeClientError):
    """The gateway refused a subscription (`forbidden`, `unknown_topic`, ...)."""

    def __init__(self, code: str, message: str, topic: str) -> None:
        self.code = code
        self.topic = topic
        super().__init__(f"{topic}: {code}: {message}")


class InvalidSubscription(BridgeClientError, ValueError):
    """A topic name or filter the gateway would refuse (caught before sending)."""


class DuplicateSubscription(BridgeClientError):
    """A client holds at most one subscription per topic (the protocol keys them by topic)."""


class HistoryLost(BridgeClientError):
    """The gateway no longer holds the events after `since`: some may have been missed.

    Raised once from the subscription's iterator, in order. The subscription stays live:
    reload your state from the source of truth and keep iterating — every event after
    the point where the subscription went live again is still delivered.
    """

    def __init__(self, topic: str, since: str | None, message: str = "") -> None:
        self.topic = topic
        self.since = since
        super().__init__(f"{topic}: history after {since} is no longer retained. {message}".strip())
