"""The HTTP API: routes, JSON answers, and the error bodies (422 names the parameter)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge_common.events import dumps
from bridge_common.logging import get_logger
from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import audit, lag_history, live, params
from .cache import SettledBuckets, SingleFlight
from .errors import BeyondRetention, InvalidParameter, MetricsApiError
from .openapi import openapi_document
from .overview import Sources, collect

log = get_logger(__name__)

REQUEST_SECONDS = Histogram(
    "bridge_metrics_api_request_seconds",
    "Time to answer an API request",
    ["route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

Handler = Callable[[Request], Awaitable[Any]]


def json_response(body: Any, status: int = 200) -> Response:
    """JSON from Python values, or already-encoded JSON bytes as they are."""
    return Response(
        body if isinstance(body, bytes) else dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def error_response(exc: MetricsApiError) -> Response:
    body: dict[str, Any] = {"error": exc.code, "message": str(exc)}
    if isinstance(exc, InvalidParameter):
        body = {
            "error": exc.code,
            "parameter": exc.parameter,
            "message": exc.message,
            "detail": [{"loc": ["query", exc.parameter], "msg": exc.message}],
        }
        if isinstance(exc, BeyondRetention):
            body["oldest"] = audit.iso(exc.oldest)
    return json_response(body, exc.status)


def _names(request: Request) -> list[str]:
    return [k for k, _ in request.query_params.multi_items()]


class MetricsApi:
    """Route handlers over one set of sources."""

    def __init__(
        self,
        sources: Sources,
        *,
        overview_ttl: float = 1.0,
        bucket_ttl: float = 30.0,
        retention: timedelta | None = None,
    ) -> None:
        self.src = sources
        #: how far back the rollups keep counts; older ranges are refused
        self.retention = retention
        self.overview_cache: SingleFlight[bytes] = SingleFlight(overview_ttl)
        self.buckets = SettledBuckets(bucket_ttl)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/v1/dashboard/overview", self._wrap("overview", self.overview)),
            Route("/api/v1/dashboard/timeline", self._wrap("timeline", self.timeline)),
            Route("/api/v1/dashboard/corrections", self._wrap("corrections", self.corrections)),
            Route("/api/v1/dashboard/lag", self._wrap("lag", self.lag)),
            Route("/api/v1/services", self._wrap("services", self.services)),
            Route("/openapi.json", self._wrap("openapi", self.openapi)),
        ]

    def _wrap(self, name: str, fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = json_response(await fn(request))
            except MetricsApiError as exc:
                if exc.status >= 500:
                    log.warning("request.failed", route=name, error=str(exc))
                response = error_response(exc)
            REQUEST_SECONDS.labels(name, str(response.status_code)).observe(
                time.perf_counter() - started
            )
            return response

        return endpoint

    async def overview(self, request: Request) -> Any:
        params.no_params(_names(request))

        async def compute() -> bytes:
            # encoded once per refresh, sent as is to every caller
            return dumps((await collect(self.src)).as_json())

        return await self.overview_cache.get(compute)

    async def timeline(self, request: Request) -> Any:
        now = datetime.now(UTC)
        q = params.timeline_query(request.query_params, _names(request), now, self.retention)
        return await self.src.bounded(
            "target database", audit.timeline(self.src.target_pool, q, self.buckets, now)
        )

    async def corrections(self, request: Request) -> Any:
        q = params.corrections_query(
            request.query_params, _names(request), datetime.now(UTC), self.retention
        )
        return await self.src.bounded("target database", audit.corrections(self.src.target_pool, q))

    async def lag(self, request: Request) -> Any:
        window = lag_history.parse_window(request.query_params, _names(request))
        return await self.src.bounded(
            "redis",
            lag_history.lag_history(self.src.redis, self.src.channels, window, time.time()),
        )

    async def services(self, request: Request) -> Any:
        params.no_params(_names(request))
        now = time.time()
        found = await self.src.bounded(
            "redis",
            live.instances(self.src.redis, self.src.channels, now, self.src.heartbeat_expiry),
        )
        return {
            "ts": audit.iso(datetime.fromtimestamp(now, UTC)),
            "up": sum(1 for i in found if i.up),
            "down": sum(1 for i in found if not i.up),
            "services": [i.as_json() for i in found],
        }

    async def openapi(self, request: Request) -> Any:
        return openapi_document()
