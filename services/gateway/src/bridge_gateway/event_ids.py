"""Event ids are Redis stream entry ids `<ms>-<seq>`; they compare as integer pairs.

Both parts are unsigned 64-bit integers written in ASCII digits (as Redis writes them);
anything else — other digits, signs, spaces, control characters, values past 2**64 - 1 —
is an invalid id, never a position to wait for.
"""

from __future__ import annotations

import re

from .errors import BadRequest

EventId = tuple[int, int]
ZERO: EventId = (0, 0)

_ID_RE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_MAX_PART = 2**64 - 1


def parse_id(value: str | bytes) -> EventId:
    """`"1700000000000-3"` → (1700000000000, 3); `"1700000000000"` → (…, 0)."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    m = _ID_RE.fullmatch(text)
    if m is None:
        raise BadRequest(f"invalid event id {text[:64]!r}")
    ms, seq = int(m.group(1)), int(m.group(2) or 0)
    if ms > _MAX_PART or seq > _MAX_PART:
        raise BadRequest(f"invalid event id {text[:64]!r}: past the 64-bit range")
    return ms, seq


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"
