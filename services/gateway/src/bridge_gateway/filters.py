"""Row filters: `{"field": value}` or `{"field": [v1, v2]}` (any of) on top-level row fields.

Values compare by their JSON text, with strings taken as they are, so the query string
`?id=5` matches a numeric `5` and `{"status": "failed"}` matches the text `failed`.

A token may bind a filter to a topic (its `filters` claim, see `auth.py`); the filter a
subscription runs with is then :func:`narrow` of the token's and the client's — the
client may only narrow what the token allows. Such a filter is *bound*: events whose row
cannot be checked (`too_large`) are withheld from it, see `views.admits`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge_common.channels import InvalidTopic, check_topic
from bridge_common.events import dumps

from .errors import BadRequest, Forbidden

MAX_FIELDS = 16
MAX_VALUES = 100
MAX_VALUE_CHARS = 512

Fields = tuple[tuple[str, frozenset[str]], ...]
#: (bound to a token, fields): a bound filter and a client's filter with the same fields
#: treat rowless events differently, so they never share a fan-out group
FilterKey = tuple[bool, Fields]


def _norm(value: Any) -> str:
    if isinstance(value, str):
        return value
    return dumps(value).decode()


class RowFilter:
    """A compiled filter; `key` is equal for equal filters (they share one fan-out group).

    `bound`: the filter comes from (or was narrowed from) a token's `filters` claim.
    """

    __slots__ = ("fields", "key", "bound")

    def __init__(self, spec: Mapping[str, Any], *, bound: bool = False) -> None:
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
        self._set(fields, bound)

    def _set(self, fields: dict[str, frozenset[str]], bound: bool) -> None:
        self.fields = fields
        self.bound = bound
        self.key: FilterKey = (bound, tuple(sorted(fields.items())))

    @classmethod
    def _of(cls, fields: dict[str, frozenset[str]], bound: bool) -> RowFilter:
        flt = cls.__new__(cls)
        flt._set(fields, bound)
        return flt

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


def narrow(token: RowFilter | None, client: RowFilter | None) -> RowFilter | None:
    """The effective filter of a subscription: the token's AND the client's.

    A client filter may only narrow the token's: on a field both name, the client's
    values must be among the token's (else :class:`Forbidden`, never a silently empty
    subscription); fields only the client names narrow further; fields only the token
    names stay. Without a token filter the client's is used as it is.
    """
    if token is None:
        return client
    if client is None:
        return token
    fields = dict(token.fields)
    for name, values in client.fields.items():
        allowed = token.fields.get(name)
        if allowed is not None and not values <= allowed:
            outside = sorted(values - allowed)[:3]
            raise Forbidden(
                f"filter on {name!r} goes beyond the token's filter "
                f"(not allowed: {', '.join(map(repr, outside))})"
            )
        fields[name] = values
    return RowFilter._of(fields, True)


#: topics a token's `filters` claim may name (each bounded like any filter)
MAX_TOKEN_TOPICS = 256


def token_filters(claim: object) -> dict[str, RowFilter]:
    """The `filters` claim of a token, compiled (bound); ValueError says what is wrong.

    Stricter than a client filter: a malformed claim must never be read as "no
    restriction", so an empty filter for a topic is refused too. A narrowed filter has at
    most twice :data:`MAX_FIELDS` fields (the token's and the client's).
    """
    if claim is None:
        return {}
    if not isinstance(claim, dict):
        raise ValueError("'filters' must be an object of topic -> filter")
    if len(claim) > MAX_TOKEN_TOPICS:
        raise ValueError(f"'filters' names more than {MAX_TOKEN_TOPICS} topics")
    out: dict[str, RowFilter] = {}
    for topic, spec in claim.items():
        try:
            check_topic(topic)
        except InvalidTopic as exc:
            raise ValueError(f"'filters': {exc}") from None
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"'filters' of {topic!r} must be a non-empty object of field -> value")
        try:
            out[topic] = RowFilter(spec, bound=True)
        except BadRequest as err:
            raise ValueError(f"'filters' of {topic!r}: {err.message}") from None
    return out
