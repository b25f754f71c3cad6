"""The summary template: `{{ value }}`-style placeholders replaced by text, never evaluated."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")

#: placeholders every summary may use (plus `labels.<name>` for the rule's labels)
NAMES = ("value", "threshold", "rule", "metric", "severity", "op")


def placeholders(template: str) -> list[str]:
    return _PLACEHOLDER.findall(template)


def unknown_placeholders(template: str, labels: Mapping[str, str]) -> list[str]:
    """Names in `template` that :func:`render` could not fill."""
    bad = []
    for name in placeholders(template):
        if name in NAMES:
            continue
        if name.startswith("labels.") and name.removeprefix("labels.") in labels:
            continue
        bad.append(name)
    return bad


def format_number(value: float | None) -> str:
    """Numbers as people read them: `0.0731`, `12`, `1.5e+06`; missing → `n/a`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace each placeholder by its value; unknown ones are left as written."""

    def sub(m: re.Match[str]) -> str:
        return values.get(m.group(1), m.group(0))

    return _PLACEHOLDER.sub(sub, template)
