"""Event ids are Redis stream ids, ``"<ms>-<seq>"``; they order as integer pairs."""

from __future__ import annotations

EventKey = tuple[int, int]


def parse_event_id(event_id: str) -> EventKey:
    """``"1764350000000-3"`` → ``(1764350000000, 3)``; raises ValueError on anything else."""
    ms, sep, seq = event_id.partition("-")
    key = (int(ms), int(seq) if sep else 0)
    if key[0] < 0 or key[1] < 0:
        raise ValueError(f"invalid event id {event_id!r}")
    return key


def format_event_id(key: EventKey) -> str:
    return f"{key[0]}-{key[1]}"
