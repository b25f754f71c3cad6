"""Turning a source audit-log row (from the table or from an event) into a target row.

Everything that would make the target reject a row is checked here, so a bad row is
dead-lettered with a readable reason instead of failing the batch it travels in.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

import msgspec

from .errors import BadRow

SEVERITIES = frozenset({"debug", "info", "warning", "error", "critical"})
_BIGINT_MAX = 2**63 - 1
_TEXT_MAX = 1_000_000  # bytes; a row beyond this is a bug upstream, not an audit entry


class TargetRow(NamedTuple):
    """One `audit_logs_ts` row, in COPY column order (see `COLUMNS`)."""

    source_id: int
    created_at: datetime
    intent_id: str | None
    actor: str
    action: str
    severity: str
    details: str  # JSON object text

    @property
    def day(self) -> date:
        return self.created_at.astimezone(UTC).date()


COLUMNS = ("source_id", "created_at", "intent_id", "actor", "action", "severity", "details")


def _text(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:
        raise BadRow(f"{name} is NULL (the target needs a value)")
    if not isinstance(value, str):
        raise BadRow(f"{name} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise BadRow(f"{name} contains a NUL character")
    if len(value) > _TEXT_MAX:
        raise BadRow(f"{name} is longer than {_TEXT_MAX} characters")
    return value


def _created_at(value: Any) -> datetime:
    if value is None:
        raise BadRow("created_at is NULL (the target needs a value)")
    if isinstance(value, datetime):
        ts = value
    elif isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise BadRow(f"created_at {value[:64]!r} is not an ISO 8601 time") from None
    else:
        raise BadRow(f"created_at must be a time, got {type(value).__name__}")
    if ts.tzinfo is None:
        raise BadRow("created_at has no time zone")
    return ts


def _details(value: Any) -> str:
    """The details as JSON object text; a JSON string holding an object is unwrapped."""
    if value is None:
        raise BadRow("details is NULL (the target needs a value)")
    if isinstance(value, str):
        # The original service stored details as JSON text; such rows arrive double-encoded.
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise BadRow(f"details is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRow(f"details must be a JSON object, got {type(value).__name__}")
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError) as exc:  # pragma: no cover - decoded JSON
        raise BadRow(f"details cannot be encoded: {exc}") from None
    if "\\u0000" in text:
        raise BadRow("details contains a NUL character (jsonb rejects \\u0000)")
    if len(text) > _TEXT_MAX:
        raise BadRow(f"details is longer than {_TEXT_MAX} characters")
    return text


def _intent_id(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if not isinstance(value, str):
        raise BadRow(f"intent_id must be a UUID, got {type(value).__name__}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRow(f"intent_id {value[:64]!r} is not a UUID") from None


def from_row(row: Any) -> TargetRow:
    """Validate a source row given as a mapping (an event's `data`)."""
    if not isinstance(row, dict):
        raise BadRow(f"row must be a JSON object, got {type(row).__name__}")
    source_id = row.get("id")
    if source_id is None:
        raise BadRow("id is NULL (the target needs a value)")
    if isinstance(source_id, bool) or not isinstance(source_id, int):
        raise BadRow(f"id must be an integer, got {type(source_id).__name__}")
    if not 0 < source_id <= _BIGINT_MAX:
        raise BadRow(f"id {source_id} is out of range")
    severity = _text(row, "severity")
    if severity not in SEVERITIES:
        raise BadRow(f"severity {severity[:32]!r} is not one of {', '.join(sorted(SEVERITIES))}")
    return TargetRow(
        source_id=source_id,
        created_at=_created_at(row.get("created_at")),
        intent_id=_intent_id(row.get("intent_id")),
        actor=_text(row, "actor"),
        action=_text(row, "action"),
        severity=severity,
        details=_details(row.get("details")),
    )


#: the source rows as `from_source` takes them; callers append WHERE/ORDER/LIMIT
SOURCE_SELECT = (
    "SELECT id, created_at, intent_id, actor, action, severity, details::text,"
    " jsonb_typeof(details) FROM audit_logs"
)
SourceTuple = tuple[int, datetime | None, Any, str | None, str | None, str | None, str | None, str]


def from_source(rec: SourceTuple) -> TargetRow:
    """Validate a row read from the source table: `(id, created_at, intent_id, actor,
    action, severity, details::text, jsonb_typeof(details))`.

    The source's own constraints already hold most rules, so the common case is cheap.
    """
    source_id, created_at, intent_id, actor, action, severity, details, kind = rec
    if (
        kind == "object"
        and created_at is not None
        and actor is not None
        and action is not None
        and severity in SEVERITIES
        and details is not None
    ):
        return TargetRow(
            source_id,
            created_at,
            None if intent_id is None else str(intent_id),
            actor,
            action,
            severity,
            details,
        )
    return from_row(
        {
            "id": source_id,
            "created_at": created_at,
            "intent_id": intent_id,
            "actor": actor,
            "action": action,
            "severity": severity,
            "details": None if details is None else msgspec.json.decode(details),
        }
    )
