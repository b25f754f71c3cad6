"""The demo's client credentials: a generated HS256 secret kept under the data folder (so
tokens survive a restart) and a JWT for every topic."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import jwt

SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name


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
    ttl: float = 24 * 3600,
) -> str:
    """A token the gateway accepts: `sub`, `exp`, `topics` (default: every topic).

    `ttl` stays within the gateway's default `BRIDGE_JWT_MAX_LIFETIME` (24 h).
    """
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + int(ttl), "topics": topics or ["*"]}
    return jwt.encode(claims, secret, algorithm="HS256")
