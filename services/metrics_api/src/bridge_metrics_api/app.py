"""The ASGI application: API routes, the dashboard, health routes, JSON 404/405."""

from __future__ import annotations

from datetime import timedelta

from bridge_common.service import Service
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .api import MetricsApi, json_response
from .dashboard import Dashboard
from .overview import Sources
from .settings import Settings


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"error": "http", "message": exc.detail}, exc.status_code)


def create_app() -> Starlette:
    """An empty app; its routes are added by `add_routes` once the sources are open."""
    return Starlette(exception_handlers={HTTPException: _http_error})


def add_routes(app: Starlette, settings: Settings, sources: Sources, svc: Service) -> None:
    app.router.routes.extend(
        [
            *MetricsApi(
                sources,
                overview_ttl=settings.overview_cache_ttl,
                bucket_ttl=settings.bucket_cache_ttl,
                retention=timedelta(days=settings.rollup_retention_days),
            ).routes(),
            *Dashboard(settings).routes(),
            *svc.health_routes(),
        ]
    )
