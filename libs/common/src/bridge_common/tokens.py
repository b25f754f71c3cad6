"""The suite's JSON Web Tokens: one verifier and one minter for every service.

The gateway (client tokens), the metrics API (ops tokens, its session cookie, the
dashboard's short-lived gateway tokens) and the dev stack all sign and check tokens here,
so the rules are the same everywhere:

* HS256 only — `alg: none` and every other algorithm are refused;
* the current secret signs; it and each previous secret verify (rotation: tokens minted
  before a switch stay valid until they expire);
* `exp` and `sub` are required; `exp` must be a JSON number (a string, a boolean or a
  non-finite value is refused) and, when a maximum lifetime is given, no further ahead
  than that, so a leaked token is never valid for ever;
* `aud` separates token kinds: a token carrying an audience is accepted only where that
  audience is asked for (the metrics API's session cookie cannot be replayed as a bearer
  token, and a bearer token cannot stand in for the cookie).

Rejections raise PyJWT's own exceptions — `jwt.ExpiredSignatureError` for an expired
token, another `jwt.InvalidTokenError` otherwise — whose text is safe to show a client.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from pydantic import Field, SecretStr, field_validator

from .jwt_secret import secret_problem
from .settings import BridgeSettings, parse_duration

ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class Keys:
    """The signing secret and the previous secrets still accepted (rotation)."""

    current: str
    previous: tuple[str, ...] = ()

    @classmethod
    def parse(cls, current: str, previous: str = "") -> Keys:
        """From `BRIDGE_JWT_SECRET` and the comma-separated `BRIDGE_JWT_PREVIOUS_SECRETS`."""
        return cls(current, tuple(p.strip() for p in previous.split(",") if p.strip()))

    @property
    def all(self) -> tuple[str, ...]:
        return (self.current, *self.previous)


def verify(
    token: str,
    secrets: Keys | tuple[str, ...],
    *,
    max_lifetime: float | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The verified claims of `token` (see the module docstring for the rules)."""
    candidates = secrets.all if isinstance(secrets, Keys) else tuple(s for s in secrets if s)
    if not candidates:
        raise jwt.InvalidTokenError("no secret to verify tokens with")
    claims: dict[str, Any] | None = None
    for i, secret in enumerate(candidates):
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=audience,
                options={"require": ["exp", "sub"], "verify_aud": True},
            )
            break
        except jwt.InvalidSignatureError:
            if i == len(candidates) - 1:
                raise
    assert claims is not None
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise jwt.InvalidTokenError("'exp' must be a number (seconds since the epoch)")
    if max_lifetime is not None and exp - (time.time() if now is None else now) > max_lifetime:
        raise jwt.InvalidTokenError(
            f"'exp' is further ahead than the maximum token lifetime ({int(max_lifetime)} s)"
        )
    if not isinstance(claims["sub"], str):
        raise jwt.InvalidTokenError("'sub' must be a string")
    return claims


def mint(
    secret: str | Keys,
    sub: str,
    lifetime: float,
    claims: Mapping[str, object] | None = None,
    *,
    now: float | None = None,
) -> tuple[str, int]:
    """A token signed with the current secret; returns it and its `exp` (epoch seconds)."""
    issued = int(time.time() if now is None else now)
    exp = issued + max(int(lifetime), 1)
    body: dict[str, object] = {"sub": sub, "iat": issued, "exp": exp, **(claims or {})}
    key = secret.current if isinstance(secret, Keys) else secret
    return jwt.encode(body, key, algorithm=ALGORITHM), exp


def scopes(claims: Mapping[str, object]) -> frozenset[str]:
    """The OAuth-style space-separated `scope` claim as a set (empty when absent or bad)."""
    scope = claims.get("scope")
    return frozenset(scope.split()) if isinstance(scope, str) else frozenset()


class JwtSettings(BridgeSettings):
    """The token settings a verifying service shares with the gateway (same variables)."""

    jwt_secret: SecretStr | None = Field(default=None, validation_alias="BRIDGE_JWT_SECRET")
    #: comma-separated secrets still accepted during a rotation (tokens are minted with
    #: BRIDGE_JWT_SECRET; these only verify tokens issued before the switch)
    jwt_previous_secrets: SecretStr | None = Field(
        default=None, validation_alias="BRIDGE_JWT_PREVIOUS_SECRETS"
    )
    #: tokens whose `exp` lies further ahead are refused: seconds, or `90m`, `24h`, `7d`
    jwt_max_lifetime: float = Field(
        default=24 * 3600.0, gt=0, le=366 * 86400, validation_alias="BRIDGE_JWT_MAX_LIFETIME"
    )

    @field_validator("jwt_max_lifetime", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("jwt_secret")
    @classmethod
    def _check_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None  # "not set" is reported by the service, naming how to disable auth
        problem = secret_problem(v.get_secret_value())
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("jwt_previous_secrets")
    @classmethod
    def _check_previous(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        for i, item in enumerate(v.get_secret_value().split(",")):
            problem = secret_problem(item.strip()) if item.strip() else None
            if problem:
                raise ValueError(f"entry {i + 1} {problem}")
        return v

    @property
    def jwt_keys(self) -> Keys | None:
        """The keys, or None when no usable secret is configured."""
        secret = self.jwt_secret.get_secret_value().strip() if self.jwt_secret else ""
        if not secret:
            return None
        previous = self.jwt_previous_secrets.get_secret_value() if self.jwt_previous_secrets else ""
        return Keys.parse(secret, previous)
