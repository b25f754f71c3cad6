"""The stack's effective settings, written by `just up` to `<data>/stack.env` so that other
commands (`just demo`, `just migrate`) can find an embedded database."""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines (shell quoting allowed); a missing file is empty."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        return out
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.removeprefix("export ").strip()
        parts = shlex.split(value) if value.strip() else [""]
        out[key] = parts[0] if parts else ""
    return out


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# written by `just up`: the running stack's settings",
        *(f"{k}={shlex.quote(v)}" for k, v in sorted(values.items())),
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
