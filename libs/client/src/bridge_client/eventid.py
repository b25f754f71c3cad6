"""Event ids are Redis stream ids, ``"<ms>-<seq>"``; they order as integer pairs."""

from __future__ import annotations

EventKey = tuple[int, int]


_MAX_PART = 2**64 - 1


def _part(text: str) -> int:
    # int() alone would take " 1", "+1", "1_0" and non-ASCII digits
    if not (0 < len(text) <= 20 and text.isascii() and text.isdigit()):
        raise ValueError
    value = int(text)
    if value > _MAX_PART:
        raise ValueError
    return value


def parse_event_id(event_id: str) -> EventKey:
    """``"1764350000000-3"`` → ``(1764350000000, 3)``; raises ValueError on anything else
    (the same rule as the gateway: ASCII digits, each part below 2**64)."""
    ms, sep, seq = event_id.partition("-")
    try:
        return (_part(ms), _part(seq) if sep else 0)
    except ValueError:
        raise ValueError(f"invalid event id {event_id!r}") from None


def format_event_id(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"
