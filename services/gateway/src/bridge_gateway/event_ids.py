"""Event ids are Redis stream entry ids `<ms>-<seq>`; they compare as integer pairs."""

from __future__ import annotations

import re

from .errors import BadRequest

EventId = tuple[int, int]
ZERO: EventId = (0, 0)

_ID_RE = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")


def parse_id(value: str | bytes) -> EventId:
    """`"1700000000000-3"` → (1700000000000, 3); `"1700000000000"` → (…, 0)."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    m = _ID_RE.match(text)
    if m is None:
        raise BadRequest(f"invalid event id {text[:64]!r}")
    return int(m.group(1)), int(m.group(2) or 0)


def format_id(event_id: EventId) -> str:
    return f"{event_id[0]}-{event_id[1]}"
