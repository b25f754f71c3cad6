"""Which HS256 secrets a service may verify tokens with: long, and not public.

A secret anyone can read lets anyone mint tokens, so every process that verifies JWTs
refuses to start on one shorter than :data:`MIN_SECRET_BYTES` or equal to a value this
repository has ever shipped (examples, manifests, docs, test fixtures).
"""

from __future__ import annotations

#: RFC 7518 §3.2: an HS256 key must be at least as long as the hash output (32 bytes)
MIN_SECRET_BYTES = 32

#: every JWT secret value that appears, or appeared, in this repository's files. Public
#: by definition: tokens signed with one of these prove nothing. Tests generate theirs.
SHIPPED_SECRETS: frozenset[str] = frozenset(
    {
        "change-me-to-a-long-random-secret",  # compose.yaml, .env.example, deploy/k8s
        "client-tests-secret-0123456789abcdef",
        "e2e-secret-that-is-long-enough-for-hs256",
        "e2e-secret-" + "k" * 60,
        "gateway-test-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef",
        "rotated-secret-0123456789abcdef-0123456789abcdef-0123456789abcdef",
    }
)

#: placeholder words: a secret containing one was copied from an example, not generated
_PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "your-secret")


def secret_problem(value: str) -> str | None:
    """Why `value` must not be used as a JWT secret, or None when it may."""
    if len(value.encode()) < MIN_SECRET_BYTES:
        return (
            f"is {len(value.encode())} bytes; use at least {MIN_SECRET_BYTES} random bytes "
            '(python -c "import secrets; print(secrets.token_urlsafe(48))")'
        )
    lowered = value.lower()
    if value in SHIPPED_SECRETS or any(p in lowered for p in _PLACEHOLDERS):
        return (
            "is a value shipped in the Bridge Lite repository (anyone can mint tokens with "
            'it); generate one: python -c "import secrets; print(secrets.token_urlsafe(48))"'
        )
    return None
