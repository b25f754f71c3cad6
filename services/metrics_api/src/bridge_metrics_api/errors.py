"""Exception root of the metrics API; `code` is stable and goes into the JSON error body."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class MetricsApiError(Exception):
    code = "internal"
    status = 500


class InvalidParameter(MetricsApiError):
    """A query parameter that does not parse or is out of bounds (HTTP 422)."""

    code = "invalid_parameter"
    status = 422

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class BeyondRetention(InvalidParameter):
    """A range starting before the oldest counts the rollups keep (HTTP 422)."""

    code = "beyond_retention"

    def __init__(self, parameter: str, oldest: datetime, retention: timedelta) -> None:
        stamp = oldest.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        super().__init__(
            parameter,
            f"before the retention of the audit rollups ({retention.days} days): the oldest "
            f"time answered is {stamp}",
        )
        self.oldest = oldest


class Unavailable(MetricsApiError):
    """A database did not answer in time (HTTP 503); the service keeps running."""

    code = "unavailable"
    status = 503
