"""Server → client control messages, encoded with the shared msgspec models."""

from __future__ import annotations

from typing import get_args

from bridge_common.events import ErrorCode, ErrorMessage, Pong, Subscribed, dumps

PONG = dumps(Pong())


def encode_subscribed(topic: str, recovered: bool, position: str | None = None) -> bytes:
    return dumps(Subscribed(topic=topic, recovered=recovered, position=position))


def encode_error(code: str, message: str, topic: str | None = None) -> bytes:
    known: ErrorCode = code if code in _CODES else "bad_request"  # type: ignore[assignment]
    return dumps(ErrorMessage(code=known, message=message, topic=topic))


#: the wire error codes, as the shared protocol types declare them
_CODES = frozenset(get_args(ErrorCode))
