"""Who may ask: ops tokens, the browser session made from one, and the dashboard's gateway
tokens.

Every request passes :class:`AuthMiddleware` (default deny: a route added later is
protected without anyone remembering to). Open paths are the probes and Prometheus
(`/healthz`, `/readyz`, `/metrics`), `/login`, `/logout` (it only clears a cookie) and the
page's static assets (public code, no data). Everything else needs either

* `Authorization: Bearer <JWT>` signed with `BRIDGE_JWT_SECRET` (or a previous secret)
  whose space-separated `scope` contains `ops` — 401 without a valid token, 403 without
  the scope; or
* the session cookie `GET /login?token=<ops JWT>` sets: a JWT of its own (audience
  `bridge-ops-session`, so it is never accepted as a bearer token, nor a bearer token as
  the cookie), HttpOnly, SameSite=Strict, Secure when the request came over https, and
  expiring with the ops token it was made from.

`GET /api/v1/gateway-token` turns a session (or a bearer ops token) into a gateway token
for the dashboard page: topics `audit_logs` and `alerts` only, at most
`BRIDGE_METRICS_GATEWAY_TOKEN_TTL` (≤ 10 min) and never beyond the session.

A browser (`Accept: text/html`) refused on `/` or elsewhere gets a small page saying how
to log in, with the same 401/403 status; programs get the JSON error body.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import jwt
from bridge_common import tokens
from bridge_common.channels import ALERTS_TOPIC
from bridge_common.events import dumps
from bridge_common.logging import get_logger
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import params
from .api import error_response
from .errors import InvalidParameter

log = get_logger(__name__)

OPS_SCOPE = "ops"
SESSION_COOKIE = "bridge_ops_session"
SESSION_AUDIENCE = "bridge-ops-session"
#: what a dashboard gateway token may read, and nothing else
DASHBOARD_TOPICS = ("audit_logs", ALERTS_TOPIC)
#: paths answered without credentials (exact), and prefixes
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/login", "/logout", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)

_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class OpsPrincipal:
    """An authenticated caller: its `sub`, when its credentials end, and how it came in."""

    sub: str
    exp: float | None
    via: Literal["bearer", "session", "disabled"]


class Refused(Exception):
    """Credentials missing or not good enough; `status` is 401 or 403."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bearer(headers: Headers) -> str | None:
    auth = headers.get("authorization")
    if not auth:
        return None
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Refused(401, "unauthorized", "Authorization must be 'Bearer <token>'")
    return value.strip()


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class OpsAuth:
    """Checks ops credentials and mints sessions and dashboard gateway tokens."""

    def __init__(
        self,
        keys: tokens.Keys | None,
        *,
        enabled: bool = True,
        max_lifetime: float = 24 * 3600.0,
        gateway_token_ttl: float = 300.0,
    ) -> None:
        if enabled and keys is None:
            raise ValueError("a JWT secret is required when ops authentication is on")
        self.keys = keys
        self.enabled = enabled
        self.max_lifetime = max_lifetime
        self.gateway_token_ttl = min(gateway_token_ttl, 600.0)

    # -- checking -----------------------------------------------------------------------
    def check_ops_token(self, token: str) -> OpsPrincipal:
        """A bearer token (or a /login token): valid, and with the `ops` scope."""
        assert self.keys is not None
        try:
            claims = tokens.verify(token, self.keys, max_lifetime=self.max_lifetime)
        except jwt.ExpiredSignatureError:
            raise Refused(401, "unauthorized", "token expired") from None
        except jwt.PyJWTError as exc:
            raise Refused(401, "unauthorized", f"invalid token: {exc}") from None
        if OPS_SCOPE not in tokens.scopes(claims):
            raise Refused(403, "forbidden", "token lacks the 'ops' scope")
        return OpsPrincipal(claims["sub"], float(claims["exp"]), "bearer")

    def check_session(self, cookie: str) -> OpsPrincipal:
        assert self.keys is not None
        try:
            claims = tokens.verify(
                cookie, self.keys, max_lifetime=self.max_lifetime, audience=SESSION_AUDIENCE
            )
        except jwt.ExpiredSignatureError:
            raise Refused(401, "unauthorized", "session expired: log in again") from None
        except jwt.PyJWTError:
            raise Refused(401, "unauthorized", "invalid session: log in again") from None
        if OPS_SCOPE not in tokens.scopes(claims):
            raise Refused(403, "forbidden", "session lacks the 'ops' scope")
        return OpsPrincipal(claims["sub"], float(claims["exp"]), "session")

    def principal(self, headers: Headers, cookies: dict[str, str]) -> OpsPrincipal:
        """The caller; a bearer header wins over the cookie. Raises :class:`Refused`."""
        if not self.enabled:
            return OpsPrincipal("anonymous", None, "disabled")
        token = bearer(headers)
        if token is not None:
            return self.check_ops_token(token)
        cookie = cookies.get(SESSION_COOKIE)
        if cookie:
            return self.check_session(cookie)
        raise Refused(401, "unauthorized", "an ops token is required (Authorization: Bearer)")

    # -- minting ------------------------------------------------------------------------
    def session_for(self, who: OpsPrincipal) -> str:
        assert self.keys is not None and who.exp is not None
        token, _ = tokens.mint(
            self.keys,
            who.sub,
            who.exp - time.time(),
            # the session ends exactly when the ops token it was made from does
            {"scope": OPS_SCOPE, "aud": SESSION_AUDIENCE, "exp": int(who.exp)},
        )
        return token

    @property
    def mints_gateway_tokens(self) -> bool:
        return self.keys is not None

    def gateway_token(self, who: OpsPrincipal) -> tuple[str, int]:
        """A token the gateway accepts for the dashboard's topics only."""
        assert self.keys is not None
        lifetime = self.gateway_token_ttl
        if who.exp is not None:
            lifetime = min(lifetime, who.exp - time.time())
        return tokens.mint(
            self.keys, f"dashboard:{who.sub}", lifetime, {"topics": list(DASHBOARD_TOPICS)}
        )


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        dumps(body),
        status_code=status,
        media_type="application/json",
        headers={**_SECURITY_HEADERS, **(headers or {})},
    )


def _wants_html(headers: Headers) -> bool:
    return "text/html" in headers.get("accept", "")


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bridge Lite · log in</title>
<link rel="stylesheet" href="/static/dashboard.css"></head>
<body class="login"><main class="login-box">
<h1>Bridge Lite <span>operations</span></h1>
<p class="login-problem">{problem}</p>
<p>This dashboard needs an <b>ops token</b>: a JWT signed with the suite's
<code>BRIDGE_JWT_SECRET</code> whose <code>scope</code> contains <code>ops</code>.
Open <code>/login?token=&lt;ops token&gt;</code> on this address to start a session
(<code>just up</code> prints such a link).</p>
<p>Programs send the token as <code>Authorization: Bearer &lt;token&gt;</code>.</p>
</main></body></html>
"""


def login_page(problem: str, status: int) -> Response:
    return HTMLResponse(
        LOGIN_PAGE.replace("{problem}", html.escape(problem)),
        status_code=status,
        headers={
            **_SECURITY_HEADERS,
            "WWW-Authenticate": 'Bearer realm="bridge-ops"',
            "Content-Security-Policy": "default-src 'none'; style-src 'self'; "
            "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        },
    )


def refusal(exc: Refused, headers: Headers) -> Response:
    if _wants_html(headers):
        return login_page(exc.message, exc.status)
    extra = {"WWW-Authenticate": 'Bearer realm="bridge-ops"'} if exc.status == 401 else {}
    return _json({"error": exc.code, "message": exc.message}, exc.status, extra)


class AuthMiddleware:
    """Default deny: every HTTP request outside the open paths needs ops credentials."""

    def __init__(self, app: ASGIApp, auth: OpsAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            who = self.auth.principal(request.headers, request.cookies)
        except Refused as exc:
            await refusal(exc, request.headers)(scope, receive, send)
            return
        scope.setdefault("state", {})["ops"] = who
        await self.app(scope, receive, send)


def _same_origin(request: Request) -> bool:
    """CSRF guard for state-changing requests: a browser's Origin / Sec-Fetch-Site must
    name this site. Requests without them (curl, scripts) carry no ambient cookie risk."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return origin.rstrip("/").lower() == own.lower()


class Sessions:
    """`/login`, `/logout` and `/api/v1/gateway-token`."""

    def __init__(self, auth: OpsAuth) -> None:
        self.auth = auth

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/login", self.login, methods=["GET"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/api/v1/gateway-token", self.gateway_token, methods=["GET"]),
        ]

    async def login(self, request: Request) -> Response:
        if not self.auth.enabled:
            return RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
        token = request.query_params.get("token")
        try:
            if not token:
                raise Refused(401, "unauthorized", "the login link carries no token")
            who = self.auth.check_ops_token(token)
        except Refused as exc:
            log.info("login.refused", reason=exc.message)
            return refusal(exc, request.headers)
        assert who.exp is not None
        response = RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
        response.set_cookie(
            SESSION_COOKIE,
            self.auth.session_for(who),
            max_age=max(int(who.exp - time.time()), 1),
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        log.info("login.session", sub=who.sub, expires=int(who.exp))
        return response

    async def logout(self, request: Request) -> Response:
        if not _same_origin(request):
            return _json({"error": "forbidden", "message": "cross-site logout refused"}, 403)
        response = RedirectResponse("/", status_code=303, headers=_SECURITY_HEADERS)
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def gateway_token(self, request: Request) -> Response:
        try:
            params.no_params([k for k, _ in request.query_params.multi_items()])
        except InvalidParameter as exc:
            return error_response(exc)
        if not self.auth.mints_gateway_tokens:
            return _json(
                {
                    "error": "not_configured",
                    "message": "BRIDGE_JWT_SECRET is not set: no gateway tokens to hand out",
                },
                404,
            )
        who: OpsPrincipal = (
            request.state.ops if self.auth.enabled else OpsPrincipal("anonymous", None, "disabled")
        )
        token, exp = self.auth.gateway_token(who)
        expires = datetime.fromtimestamp(exp, UTC).isoformat().replace("+00:00", "Z")
        return _json(
            {
                "token": token,
                "expires_at": expires,
                "expires_in": max(exp - int(time.time()), 0),
                "topics": list(DASHBOARD_TOPICS),
            },
            200,
        )
