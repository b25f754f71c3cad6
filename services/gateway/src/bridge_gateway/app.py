"""The gateway's HTTP surface: WebSocket and SSE routes, snapshots, the browser client, health."""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from .gateway import Gateway
from .presence_http import presence_topic
from .snapshot_http import snapshot_topic
from .sse import events_audit_logs, events_intent, events_topic
from .websocket import websocket_endpoint


@cache
def _client_js() -> bytes | None:
    try:
        return (resources.files("bridge_gateway") / "static" / "client.js").read_bytes()
    except (FileNotFoundError, OSError):
        return None


async def client_js(request: Request) -> Response:
    body = _client_js()
    if body is None:
        _client_js.cache_clear()
        return PlainTextResponse(
            "client.js is not installed in this gateway build "
            "(expected bridge_gateway/static/client.js)",
            status_code=404,
        )
    return Response(
        body,
        media_type="text/javascript",
        headers={"cache-control": "public, max-age=300", "access-control-allow-origin": "*"},
    )


def build_app(gateway: Gateway, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    routes: list[BaseRoute] = [
        WebSocketRoute("/ws", websocket_endpoint),
        WebSocketRoute("/ws/intents", websocket_endpoint),
        Route("/events/audit-logs", events_audit_logs, methods=["GET"]),
        Route("/events/intents/{intent_id}", events_intent, methods=["GET"]),
        Route("/events/{topic}", events_topic, methods=["GET"]),
        Route("/presence/{topic}", presence_topic, methods=["GET"]),
        Route("/snapshot/{topic}", snapshot_topic, methods=["GET"]),
        Route("/client.js", client_js, methods=["GET"]),
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes)
    app.state.gateway = gateway
    return app
