"""The demo's credentials: a generated HS256 secret kept under the data folder (so tokens
survive a restart), a gateway JWT for every topic, and an ops JWT for the metrics API's
dashboard login link. Both last 12 hours (inside the services' default
`BRIDGE_JWT_MAX_LIFETIME` of 24 h); `just up` mints fresh ones every time it starts."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from bridge_common import tokens

SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name
TTL = 12 * 3600.0


def load_or_create_secret(data_dir: Path) -> str:
    path = data_dir / SECRET_FILE
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = secrets.token_urlsafe(48)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def mint(
    secret: str,
    *,
    subject: str = "demo",
    topics: list[str] | None = None,
    ttl: float = TTL,
) -> str:
    """A token the gateway accepts: `sub`, `exp`, `topics` (default: every topic)."""
    token, _ = tokens.mint(secret, subject, ttl, {"topics": topics or ["*"]})
    return token


def mint_ops(secret: str, *, subject: str = "ops", ttl: float = TTL) -> str:
    """A token the metrics API accepts (`scope: ops`): bearer header or login link."""
    token, _ = tokens.mint(secret, subject, ttl, {"scope": "ops"})
    return token
