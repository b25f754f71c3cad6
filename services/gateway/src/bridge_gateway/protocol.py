"""Server → client control messages, encoded with the shared msgspec models."""

from __future__ import annotations

from bridge_common.events import ErrorCode, ErrorMessage, Pong, Subscribed, dumps

PONG = dumps(Pong())


def encode_subscribed(topic: str, recovered: bool, position: str | None = None) -> bytes:
    return dumps(Subscribed(topic=topic, recovered=recovered, position=position))


def encode_error(code: str, message: str, topic: str | None = None) -> bytes:
    known: ErrorCode = code if code in _CODES else "bad_request"  # type: ignore[assignment]
    return dumps(ErrorMessage(code=known, message=message, topic=topic))


_CODES = {
    "bad_request",
    "forbidden",
    "unknown_topic",
    "too_many_subscriptions",
    "history_lost",
    "snapshot_unavailable",
    "snapshot_too_large",
    "unavailable",
    "unauthorized",
}
