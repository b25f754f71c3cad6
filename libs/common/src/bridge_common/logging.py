"""Structured logging (structlog): JSON lines by default, colourless console for humans.

Every line carries the service and instance bound once at start-up; log events are
named `noun.verb` (`outbox.published`) with their facts as keys.

Credentials never reach a log line: `token=` / `access_token=` query values, bearer
tokens and the user-info part of URLs (`https://user:pass@host`) are replaced by
`[redacted]` in every line, ours and the libraries' (uvicorn logs request paths with
their query strings).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


_SECRETS = re.compile(
    r"(?P<q>[?&;](?:token|access_token|id_token|jwt|password|secret)=)[^&;\s\"'#]*"
    r"|(?P<b>\b[Bb]earer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(?P<u>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']+@",
    re.IGNORECASE,
)


def _hide(m: re.Match[str]) -> str:
    return (m.group("q") or m.group("b") or m.group("u")) + (
        "[redacted]@" if m.group("u") else "[redacted]"
    )


def redact(text: str) -> str:
    """`text` with credentials (query tokens, bearer tokens, URL user-info) replaced."""
    return _SECRETS.sub(_hide, text)


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in event.items():
        if isinstance(v, str):
            event[k] = redact(v)
    return event


class RedactingFilter(logging.Filter):
    """Redacts credentials from stdlib records (formatted once, here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(
    fmt: str = "json", level: str = "info", **bound: Any
) -> structlog.stdlib.BoundLogger:
    """Configure structlog and the stdlib root logger once per process; return a bound logger."""
    lvl = _LEVELS.get(level.lower(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through stdlib (uvicorn, psycopg, redis) go to stdout too.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _redact_event,
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.INFO) if lvl > logging.DEBUG else lvl)
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**bound)
    return get_logger()


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
