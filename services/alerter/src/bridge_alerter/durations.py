"""Durations in rules files: `500ms`, `30s`, `5m`, `1h30m`, `2d`, `1w`, or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")


def parse_duration(value: object) -> float:
    """Seconds for a duration; raises ValueError with a readable reason."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s, 5m, 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 500ms, 30s, 5m, 1h")
    text = value.strip().replace(" ", "")
    if not _WHOLE.match(text):
        raise ValueError(f"bad duration {value!r} (use e.g. 500ms, 30s, 5m, 1h30m, 2d)")
    return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """Short human form: `1h30m`, `45s`, `500ms`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out = []
    rest = int(round(seconds))
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out) or "0s"
