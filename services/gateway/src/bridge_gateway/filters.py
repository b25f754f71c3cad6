"""Row filters: `{"field": value}` or `{"field": [v1, v2]}` (any of) on top-level row fields.

Values compare by their JSON text, with strings taken as they are, so the query string
`?id=5` matches a numeric `5` and `{"status": "failed"}` matches the text `failed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge_common.events import dumps

from .errors import BadRequest

MAX_FIELDS = 16
MAX_VALUES = 100
MAX_VALUE_CHARS = 512

FilterKey = tuple[tuple[str, frozenset[str]], ...]


def _norm(value: Any) -> str:
    if isinstance(value, str):
        return value
    return dumps(value).decode()


class RowFilter:
    """A compiled filter; `key` is equal for equal filters (they share one fan-out group)."""

    __slots__ = ("fields", "key")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        if len(spec) > MAX_FIELDS:
            raise BadRequest(f"filter has more than {MAX_FIELDS} fields")
        fields: dict[str, frozenset[str]] = {}
        for name, raw in spec.items():
            if not isinstance(name, str) or not name or len(name) > 64:
                raise BadRequest("filter field names are 1-64 characters")
            values = raw if isinstance(raw, list) else [raw]
            if not values or len(values) > MAX_VALUES:
                raise BadRequest(f"filter {name!r} needs 1-{MAX_VALUES} values")
            normed = set()
            for v in values:
                if isinstance(v, dict | list):
                    raise BadRequest(
                        f"filter {name!r}: values are strings, numbers, booleans or null"
                    )
                n = _norm(v)
                if len(n) > MAX_VALUE_CHARS:
                    raise BadRequest(f"filter {name!r}: value longer than {MAX_VALUE_CHARS}")
                normed.add(n)
            fields[name] = frozenset(normed)
        self.fields = fields
        self.key: FilterKey = tuple(sorted(fields.items()))

    def matches(self, row: Mapping[str, Any]) -> bool:
        for name, allowed in self.fields.items():
            if name not in row or _norm(row[name]) not in allowed:
                return False
        return True


def compile_filter(spec: Mapping[str, Any] | None) -> RowFilter | None:
    """None (or an empty mapping) means every row."""
    if not spec:
        return None
    return RowFilter(spec)
