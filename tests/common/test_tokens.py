"""`bridge_common.tokens`: the one JWT verifier and minter of the suite (the gateway and
the metrics API both use it)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from bridge_common.settings import parse_duration
from bridge_common.tokens import JwtSettings, Keys, mint, scopes, verify

SECRET = "current-secret-" + "c" * 60  # noqa: S105 - test-only keys
OLD = "previous-secret-" + "p" * 40  # noqa: S105
KEYS = Keys.parse(SECRET, f" {OLD} , ")


def encode(claims: dict[str, object], secret: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=alg)


def test_mint_then_verify_with_rotation() -> None:
    token, exp = mint(KEYS, "alice", 600, {"scope": "ops read"})
    claims = verify(token, KEYS)
    assert claims["sub"] == "alice" and claims["exp"] == exp and claims["iat"] <= time.time()
    assert scopes(claims) == {"ops", "read"}
    assert KEYS.previous == (OLD,)
    old_token, _ = mint(OLD, "bob", 60)
    assert verify(old_token, KEYS)["sub"] == "bob"  # minted before the switch
    with pytest.raises(jwt.InvalidSignatureError):
        verify(old_token, Keys(SECRET))  # after the previous secret is retired


@pytest.mark.parametrize(
    ("claims", "needle"),
    [
        ({"sub": "x"}, "exp"),
        ({"exp": time.time() + 3600}, "sub"),
        ({"sub": "x", "exp": "9999999999"}, "exp"),
        ({"sub": "x", "exp": True}, "exp"),
        ({"sub": 7, "exp": time.time() + 3600}, "sub"),
        ({"sub": "x", "exp": time.time() + 90_000}, "maximum token lifetime"),
        ({"sub": "x", "exp": time.time() + 3600, "aud": "bridge-ops-session"}, "audience"),
    ],
)
def test_refusals(claims: dict[str, object], needle: str) -> None:
    with pytest.raises(jwt.InvalidTokenError) as err:
        verify(encode(claims), KEYS, max_lifetime=86_400)
    assert needle in str(err.value).lower() or needle in type(err.value).__name__.lower()


def test_expired_is_its_own_error() -> None:
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(encode({"sub": "x", "exp": int(time.time()) - 5}), KEYS)


@pytest.mark.parametrize("alg", ["HS512", "HS384"])
def test_only_hs256(alg: str) -> None:
    with pytest.raises(jwt.InvalidAlgorithmError):
        verify(encode({"sub": "x", "exp": time.time() + 60}, alg=alg), KEYS)


def test_alg_none_refused() -> None:
    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'sub': 'x', 'exp': 2**33})}."
    with pytest.raises(jwt.InvalidTokenError):
        verify(unsigned, KEYS)


def test_audience_separates_token_kinds() -> None:
    session, _ = mint(KEYS, "alice", 60, {"aud": "bridge-ops-session"})
    assert verify(session, KEYS, audience="bridge-ops-session")["sub"] == "alice"
    bearer, _ = mint(KEYS, "alice", 60)
    with pytest.raises(jwt.MissingRequiredClaimError):
        verify(bearer, KEYS, audience="bridge-ops-session")


def test_settings_keys_and_durations() -> None:
    s = JwtSettings(BRIDGE_JWT_SECRET=SECRET, BRIDGE_JWT_MAX_LIFETIME="90m")
    assert s.jwt_max_lifetime == 5400 and s.jwt_keys == Keys(SECRET)
    assert JwtSettings(BRIDGE_JWT_SECRET="  ").jwt_keys is None
    with pytest.raises(ValueError, match="duration"):
        JwtSettings(BRIDGE_JWT_MAX_LIFETIME="forever")
    assert parse_duration("2d") == 172_800
