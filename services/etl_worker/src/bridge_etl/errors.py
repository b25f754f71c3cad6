"""Exception root of the ETL worker."""

from __future__ import annotations

from bridge_common.errors import BridgeError


class EtlError(BridgeError):
    """Base of every error the ETL worker raises on purpose."""

    code = "etl"


class TargetNotMigrated(EtlError):
    """The target database has no `audit_logs_ts`: `bridge-migrate` has not run."""

    code = "target_not_migrated"


class BadRow(EtlError):
    """A source row that cannot be stored; `reason` goes to the dead-letter stream."""

    code = "bad_row"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
