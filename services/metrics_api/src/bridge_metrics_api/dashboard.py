"""The dashboard page `/`: static HTML, CSS and JavaScript shipped in the package.

No build step and no CDN: the page draws its own SVG chart and polls this API (with the
session cookie of `/login`, see `auth.py`); when `BRIDGE_DASHBOARD_GATEWAY_URL` is set it
also imports the gateway's browser client (`<gateway>/client.js`, `BridgeClient`) and
listens to `audit_logs` and `alerts` events through it (WebSocket, EventSource fallback,
reconnect and resume), refreshing as they arrive. Its gateway token comes from
`/api/v1/gateway-token` through the client's token provider: short-lived, and fetched
again before it runs out. If the client cannot be loaded the page keeps polling and tries
again later.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from .settings import Settings

STATIC = Path(__file__).parent / "static"
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def gateway_sources(http_url: str) -> tuple[str, str]:
    """CSP sources of a gateway: (script-src: its origin, connect-src: http and ws origins).

    The page imports `client.js` from the gateway's origin, then talks to it over
    WebSocket (`ws[s]://`) and, as a fallback, EventSource/fetch (`http[s]://`).
    """
    parts = urlsplit(http_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    ws = ("wss" if parts.scheme == "https" else "ws") + f"://{parts.netloc}"
    return origin, f"{origin} {ws}"


class Dashboard:
    def __init__(self, settings: Settings, *, gateway_tokens: bool = False) -> None:
        self.config = {
            "gatewayUrl": settings.dashboard_gateway_url,
            # the page asks /api/v1/gateway-token for its gateway tokens
            "gatewayTokens": gateway_tokens,
            "auth": settings.metrics_auth == "jwt",
            "pollMs": settings.dashboard_poll_ms,
            "namespace": settings.namespace,
        }
        script = connect = "'self'"
        if settings.dashboard_gateway_url:
            gw_script, gw_connect = gateway_sources(settings.dashboard_gateway_url)
            script += " " + gw_script
            connect += " " + gw_connect
        self.csp = (
            f"default-src 'none'; script-src {script}; style-src 'self'; img-src 'self' data:; "
            f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page),
            Route("/static/{name}", self.asset),
            Route("/favicon.ico", self.favicon),
        ]

    async def page(self, request: Request) -> Response:
        # "</" cannot end the JSON's script element early once escaped
        config = json.dumps(self.config).replace("</", "<\\/")
        html = _read("index.html").decode().replace("__DASHBOARD_CONFIG__", config)
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": self.csp,
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def favicon(self, request: Request) -> Response:
        return Response(_read("favicon.svg"), media_type=_ASSETS["favicon.svg"])

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        media = _ASSETS.get(name)
        if media is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(
            _read(name),
            media_type=media,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )
