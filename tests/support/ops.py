"""Ops credentials for everything that calls the metrics API (tests, benchmarks): a token
with the `ops` scope, signed with the suite's test secret, sent as a bearer header.

    httpx.get(api.url + "/api/v1/services", auth=OPS)
"""

from __future__ import annotations

from collections.abc import Generator

import httpx

from .suite import JWT_SECRET, make_token


def ops_token(
    *, sub: str = "tests", scope: str = "ops", ttl: float = 3600, secret: str = JWT_SECRET
) -> str:
    """A token the metrics API accepts (`scope` contains `ops`); no topics needed."""
    return make_token([], secret=secret, sub=sub, ttl=ttl, extra={"scope": scope})


def ops_headers(**kwargs: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {ops_token(**kwargs)}"}  # type: ignore[arg-type]


class OpsAuth(httpx.Auth):
    """httpx auth that sends a fresh ops token with every request (never one that expired
    during a long module)."""

    def __init__(self, secret: str = JWT_SECRET) -> None:
        self.secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {ops_token(secret=self.secret)}"
        yield request


OPS = OpsAuth()


def ops_get(url: str, **kwargs: object) -> httpx.Response:
    """`httpx.get` with ops credentials."""
    return httpx.get(url, auth=OPS, **kwargs)  # type: ignore[arg-type]


def login_url(base: str, **kwargs: object) -> str:
    """The metrics API's browser login link for a fresh ops token."""
    return f"{base}/login?token={ops_token(**kwargs)}"  # type: ignore[arg-type]
