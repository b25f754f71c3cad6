"""The ASGI application: ops authentication in front of the API routes, the dashboard and
the session routes; health routes; JSON 404/405."""

from __future__ import annotations

from datetime import timedelta

from bridge_common.service import Service
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .api import MetricsApi, json_response
from .auth import AuthMiddleware, OpsAuth, Sessions
from .dashboard import Dashboard
from .overview import Sources
from .settings import Settings


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"error": "http", "message": exc.detail}, exc.status_code)


def ops_auth(settings: Settings) -> OpsAuth:
    return OpsAuth(
        settings.jwt_keys,
        enabled=settings.metrics_auth == "jwt",
        max_lifetime=settings.jwt_max_lifetime,
        gateway_token_ttl=settings.metrics_gateway_token_ttl,
    )


def create_app(auth: OpsAuth) -> Starlette:
    """An app guarded by `auth`; its routes are added by `add_routes` once the sources
    are open."""
    app = Starlette(exception_handlers={HTTPException: _http_error})
    app.add_middleware(AuthMiddleware, auth=auth)
    return app


def add_routes(
    app: Starlette, settings: Settings, sources: Sources, svc: Service, auth: OpsAuth
) -> None:
    app.router.routes.extend(
        [
            *MetricsApi(
                sources,
                overview_ttl=settings.overview_cache_ttl,
                bucket_ttl=settings.bucket_cache_ttl,
                retention=timedelta(days=settings.rollup_retention_days),
            ).routes(),
            *Sessions(auth).routes(),
            *Dashboard(settings, gateway_tokens=auth.mints_gateway_tokens).routes(),
            *svc.health_routes(),
        ]
    )
