"""Exception root of the metrics API; `code` is stable and goes into the JSON error body."""

from __future__ import annotations


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


class Unavailable(MetricsApiError):
    """A database did not answer in time (HTTP 503); the service keeps running."""

    code = "unavailable"
    status = 503
