"""Client authentication: JWT HS256 bearer tokens carrying `sub`, `exp`, `topics` and
optionally `filters` (row-level access: `{"<topic>": {"<field>": value-or-list}}`).

`exp` must be a JSON number (RFC 7519 NumericDate; a string, a boolean or a non-finite
value is refused) no further ahead than `max_lifetime` (`BRIDGE_JWT_MAX_LIFETIME`), so
a leaked token is never valid for ever. A malformed `filters` claim refuses the token
(401) — it is never read as "no restriction". A token with `filters` is never listed in
presence (its `sub` and `info` would reach other tenants' subscribers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from bridge_common import tokens

from .errors import Unauthorized
from .filters import RowFilter, token_filters


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is connected and which topics they may read (`None` = every topic)."""

    sub: str
    topics: frozenset[str] | None
    exp: float | None = None
    #: the `presence` claim (False: never listed) and the `info` claim (any JSON), as given
    presence: object = field(default=None, compare=False)
    info: Any = field(default=None, compare=False)
    #: row-level access: topic -> the filter every subscription to it runs under
    filters: Mapping[str, RowFilter] = field(default_factory=dict, compare=False)

    def may_read(self, topic: str) -> bool:
        return self.topics is None or topic in self.topics

    def row_filter(self, topic: str) -> RowFilter | None:
        """The token's filter on `topic` (None: the whole topic)."""
        return self.filters.get(topic)


ANONYMOUS = Principal("anonymous", None)


def token_from(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """`Authorization: Bearer <token>` first, then `?token=`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    token = query.get("token")
    return token or None


class Authenticator:
    """Verifies tokens; with auth disabled everybody reads every topic."""

    def __init__(
        self,
        secret: str | None,
        enabled: bool = True,
        previous: tuple[str, ...] = (),
        *,
        max_lifetime: float = 24 * 3600.0,
    ) -> None:
        if enabled and not secret:
            raise ValueError("a secret is required when auth is enabled")
        self.secret = secret or ""
        #: secrets still accepted while tokens minted with them drain (rotation)
        self.previous = tuple(p for p in previous if p)
        self.enabled = enabled
        self.max_lifetime = max_lifetime

    def _decode(self, token: str) -> dict[str, Any]:
        """Verify with the current secret, then with each previous one (rotation)."""
        # one verifier for the suite (HS256 pinned, `exp` a bounded number, `sub` a string)
        return tokens.verify(token, (self.secret, *self.previous), max_lifetime=self.max_lifetime)

    def authenticate(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise Unauthorized("missing token")
        try:
            claims = self._decode(token)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        topics = claims.get("topics")
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise Unauthorized("invalid token: 'topics' must be a list of topic names")
        try:
            filters = token_filters(claims.get("filters"))
        except ValueError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        allowed = None if "*" in topics else frozenset(topics)
        return Principal(
            claims["sub"],
            allowed,
            float(claims["exp"]),
            # a row-filtered holder is hidden: presence lists are topic-wide
            presence=False if filters else claims.get("presence"),
            info=claims.get("info"),
            filters=filters,
        )
