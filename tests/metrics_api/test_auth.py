"""Ops authentication of the metrics API: every route of the app answers 401 / 403 / 200 as
it should (the route list is read from the app itself, so a new route cannot be left
out), the session cookie's flags, the dashboard's gateway tokens, and the start-up rules."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import jwt
import pytest
import redis
from bridge_common.channels import Channels
from bridge_common.service import Service
from bridge_metrics_api.app import add_routes, create_app, ops_auth
from bridge_metrics_api.auth import OPEN_PATHS, SESSION_COOKIE, is_open
from bridge_metrics_api.overview import Sources
from bridge_metrics_api.settings import Settings
from starlette.routing import Route

from tests.support.ops import ops_token
from tests.support.processes import ServiceProcess
from tests.support.suite import JWT_SECRET, make_token

OLD_SECRET = "rotated-out-secret-" + "o" * 50  # noqa: S105 - test-only key
PROBES = {"/healthz", "/readyz", "/metrics"}
#: a value for each path parameter of the app's routes
PATH_VALUES = {"name": "dashboard.css"}


def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the real app serves, path parameters filled in."""
    settings = Settings(BRIDGE_JWT_SECRET=JWT_SECRET, BRIDGE_DASHBOARD_GATEWAY_URL="http://gw:1")
    auth = ops_auth(settings)
    app = create_app(auth)
    sources = Sources(None, None, None, Channels("x"), 1.0)  # type: ignore[arg-type]
    add_routes(app, settings, sources, Service(settings, app=app), auth)
    out = []
    for route in app.routes:
        assert isinstance(route, Route), route
        path = route.path
        for name in route.param_convertors:
            path = path.replace("{" + name + "}", PATH_VALUES[name])
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            out.append((method, path))
    return out


ROUTES = app_routes()
PROTECTED = [(m, p) for m, p in ROUTES if not is_open(p)]


@pytest.fixture(scope="module")
def api(
    api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    env = {
        **api_env,
        "BRIDGE_JWT_PREVIOUS_SECRETS": OLD_SECRET,
        "BRIDGE_METRICS_GATEWAY_TOKEN_TTL": "120",
        "BRIDGE_DASHBOARD_GATEWAY_URL": "http://127.0.0.1:9",
    }
    proc = ServiceProcess("metrics_api", env, Path(tmp_path_factory.mktemp("auth")))
    proc.start()
    yield proc
    proc.stop()


def call(api: ServiceProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, api.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_route_list_covers_the_app() -> None:
    paths = {p for _, p in ROUTES}
    # the API, the dashboard and the session routes are all there, and guarded
    for path in (
        "/api/v1/dashboard/overview",
        "/api/v1/dashboard/timeline",
        "/api/v1/dashboard/corrections",
        "/api/v1/services",
        "/api/v1/gateway-token",
        "/openapi.json",
        "/",
    ):
        assert path in paths and not is_open(path)
    assert PROBES <= paths and PROBES <= OPEN_PATHS


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_route_matrix(api: ServiceProcess, method: str, path: str) -> None:
    cases = {
        "no token": ({}, 401),
        "garbage": (bearer("not-a-jwt"), 401),
        "not bearer": ({"Authorization": f"Basic {ops_token()}"}, 401),
        "wrong secret": (bearer(ops_token(secret="another-secret-" + "x" * 40)), 401),
        "expired": (bearer(ops_token(ttl=-30)), 401),
        "beyond max lifetime": (bearer(ops_token(ttl=40 * 86400)), 401),
        "hs512": (
            bearer(make_token([], extra={"scope": "ops"}, alg="HS512")),
            401,
        ),
        "gateway token (no scope)": (bearer(make_token(["*"])), 403),
        "other scopes": (bearer(ops_token(scope="read opsx")), 403),
    }
    for label, (headers, status) in cases.items():
        resp = call(api, method, path, headers={**headers, "Accept": "application/json"})
        assert resp.status_code == status, (label, resp.text)
        body = resp.json()
        assert body["error"] == ("unauthorized" if status == 401 else "forbidden"), label
        assert body["message"], label
    for label, headers in {
        "ops": bearer(ops_token()),
        "ops among scopes": bearer(ops_token(scope="read ops write")),
        "previous secret": bearer(ops_token(secret=OLD_SECRET)),
    }.items():
        resp = call(api, method, path, headers=headers)
        assert resp.status_code == 200, (label, resp.status_code, resp.text)


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p in ROUTES if is_open(p)])
def test_open_routes_need_no_token(api: ServiceProcess, method: str, path: str) -> None:
    resp = call(api, method, path, follow_redirects=False)
    if path == "/login":
        assert resp.status_code == 401  # open, but it wants the token it turns into a session
    else:
        assert resp.status_code in (200, 303), (path, resp.status_code)


def session_cookie(resp: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    jar.load(resp.headers["set-cookie"])
    return jar


def test_login_sets_a_strict_http_only_session_that_ends_with_the_token(
    api: ServiceProcess,
) -> None:
    token = ops_token(ttl=900)
    exp = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["exp"]
    resp = call(api, "GET", "/login", params={"token": token}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    assert resp.headers["referrer-policy"] == "no-referrer"
    raw = resp.headers["set-cookie"]
    morsel = session_cookie(resp)[SESSION_COOKIE]
    assert morsel["httponly"] and morsel["samesite"].lower() == "strict" and morsel["path"] == "/"
    assert "secure" not in raw.lower()  # plain http, no trusted proxy
    assert 890 <= int(morsel["max-age"]) <= 900
    claims = jwt.decode(
        morsel.value, JWT_SECRET, algorithms=["HS256"], audience="bridge-ops-session"
    )
    assert claims["exp"] == exp and claims["sub"] == "tests"
    # the cookie opens the API and the page ...
    cookies = {SESSION_COOKIE: morsel.value}
    assert call(api, "GET", "/api/v1/services", cookies=cookies).status_code == 200
    page = call(api, "GET", "/", cookies=cookies, headers={"Accept": "text/html"})
    assert page.status_code == 200 and "dashboard-config" in page.text
    # ... but it is no bearer token, and a bearer token is no cookie
    assert call(api, "GET", "/api/v1/services", headers=bearer(morsel.value)).status_code == 401
    forged = {SESSION_COOKIE: token}
    assert call(api, "GET", "/api/v1/services", cookies=forged).status_code == 401
    # a forwarded https header from an untrusted peer does not make it Secure
    proxied = call(
        api,
        "GET",
        "/login",
        params={"token": token},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert "secure" not in proxied.headers["set-cookie"].lower()


def test_login_refusals(api: ServiceProcess) -> None:
    html = {"Accept": "text/html"}
    for token, status in ((None, 401), ("junk", 401), (make_token(["*"]), 403)):
        params = {"token": token} if token else {}
        resp = call(api, "GET", "/login", params=params, headers=html, follow_redirects=False)
        assert resp.status_code == status
        assert "set-cookie" not in resp.headers
        assert "text/html" in resp.headers["content-type"] and "/login?token=" in resp.text


def test_unauthenticated_browser_gets_a_login_page_not_json(api: ServiceProcess) -> None:
    page = call(api, "GET", "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 401 and "text/html" in page.headers["content-type"]
    assert "ops token" in page.text and "/login?token=" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    program = call(api, "GET", "/")
    assert program.status_code == 401 and program.json()["error"] == "unauthorized"


def test_logout_clears_the_cookie_and_refuses_other_sites(api: ServiceProcess) -> None:
    cookies = {SESSION_COOKIE: "x"}
    evil = call(api, "POST", "/logout", cookies=cookies, headers={"Origin": "https://evil.test"})
    assert evil.status_code == 403 and "set-cookie" not in evil.headers
    cross = call(api, "POST", "/logout", cookies=cookies, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    ok = call(
        api, "POST", "/logout", cookies=cookies, headers={"Origin": api.url}, follow_redirects=False
    )
    assert ok.status_code == 303
    morsel = session_cookie(ok)[SESSION_COOKIE]
    assert morsel.value in ("", '""') and int(morsel["max-age"]) == 0
    assert call(api, "GET", "/logout").status_code == 405  # never by a GET (link, image)


def test_gateway_token_scope_and_expiry(api: ServiceProcess) -> None:
    before = time.time()
    resp = call(api, "GET", "/api/v1/gateway-token", headers=bearer(ops_token(sub="alice")))
    assert resp.status_code == 200 and resp.headers["cache-control"] == "no-store"
    body = resp.json()
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["topics"] == ["audit_logs", "alerts"] and body["topics"] == claims["topics"]
    assert claims["sub"] == "dashboard:alice" and "scope" not in claims
    assert before - 1 <= claims["exp"] - 120 <= time.time() + 1  # BRIDGE_..._TOKEN_TTL=120
    assert body["expires_at"].endswith("Z") and 0 < body["expires_in"] <= 120
    # never beyond the ops credentials it came from
    short = call(api, "GET", "/api/v1/gateway-token", headers=bearer(ops_token(ttl=30))).json()
    assert jwt.decode(short["token"], JWT_SECRET, algorithms=["HS256"])["exp"] <= time.time() + 31
    # it is no ops token
    assert call(api, "GET", "/api/v1/services", headers=bearer(body["token"])).status_code == 403
    # a session gets one too
    login = call(api, "GET", "/login", params={"token": ops_token()}, follow_redirects=False)
    cookies = {SESSION_COOKIE: session_cookie(login)[SESSION_COOKIE].value}
    assert call(api, "GET", "/api/v1/gateway-token", cookies=cookies).status_code == 200
    bad = call(api, "GET", "/api/v1/gateway-token?x=1", cookies=cookies)
    assert bad.status_code == 422 and bad.json()["parameter"] == "x"


def test_gateway_accepts_the_dashboard_token_for_its_topics_only(
    api: ServiceProcess, spawn, api_env, redis_url: str, namespace: str
) -> None:
    r = redis.Redis.from_url(redis_url)
    r.sadd(Channels(namespace).topics, "audit_logs", "alerts", "intents")
    r.close()
    gw = spawn("gateway", {**api_env, "BRIDGE_AUTH": "jwt"})
    token = call(api, "GET", "/api/v1/gateway-token", headers=bearer(ops_token())).json()["token"]

    def probe(topic: str) -> int:
        with httpx.stream(
            "GET", f"{gw.url}/events/{topic}", params={"token": token}, timeout=10
        ) as resp:
            return resp.status_code

    assert probe("audit_logs") == 200 and probe("alerts") == 200
    assert probe("intents") == 403


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "bridge_metrics_api"],
        env={**os.environ, **env},
        capture_output=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"BRIDGE_JWT_SECRET": ""}, "BRIDGE_JWT_SECRET"),
        ({"BRIDGE_DASHBOARD_GATEWAY_TOKEN": "eyJ.x.y"}, "BRIDGE_DASHBOARD_GATEWAY_TOKEN"),
        ({"BRIDGE_METRICS_AUTH": "maybe"}, "BRIDGE_METRICS_AUTH"),
        ({"BRIDGE_METRICS_GATEWAY_TOKEN_TTL": "601"}, "BRIDGE_METRICS_GATEWAY_TOKEN_TTL"),
        ({"BRIDGE_JWT_MAX_LIFETIME": "forever"}, "BRIDGE_JWT_MAX_LIFETIME"),
    ],
)
def test_refuses_to_start_without_usable_auth_settings(
    bridge_env: dict[str, str], change: dict[str, str], needle: str
) -> None:
    proc = run_cli({**bridge_env, **change})
    assert proc.returncode == 2
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines


def test_disabled_auth_answers_everyone(spawn, api_env) -> None:
    env = {k: v for k, v in api_env.items() if k != "BRIDGE_JWT_SECRET"}
    open_api = spawn("metrics_api", {**env, "BRIDGE_METRICS_AUTH": "disabled"})
    assert httpx.get(open_api.url + "/api/v1/services").status_code == 200
    assert httpx.get(open_api.url + "/").status_code == 200
    # no secret: no gateway tokens to hand out, and the page knows it
    assert httpx.get(open_api.url + "/api/v1/gateway-token").status_code == 404
    assert '"gatewayTokens": false' in httpx.get(open_api.url + "/").text


def test_secure_cookie_behind_a_configured_https_proxy(spawn, api_env) -> None:
    proxied = spawn("metrics_api", {**api_env, "BRIDGE_METRICS_FORWARDED_ALLOW_IPS": "127.0.0.1"})
    resp = httpx.get(
        proxied.url + "/login",
        params={"token": ops_token()},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert resp.status_code == 303
    morsel = session_cookie(resp)[SESSION_COOKIE]
    assert morsel["secure"] and morsel["httponly"] and morsel["samesite"].lower() == "strict"
