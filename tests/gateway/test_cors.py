"""CORS: refusals carry the same `Access-Control-Allow-Origin` as the streams they refuse.

A browser page on another origin can read a status only with that header; without it the
browser client sees an opaque network error for a 401 and cannot tell it from an outage.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import websockets

from tests.gateway.conftest import SECRET, connect, token

PAGE = "https://dash.example.com"
OTHER = "https://evil.example.net"


async def _get(url: str, origin: str | None = None, **params: str) -> httpx.Response:
    headers = {"Origin": origin} if origin else {}
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", url, params=params, headers=headers) as resp:
            # a stream (200) is left unread: its headers are what this test is about
            if resp.status_code != 200:
                await resp.aread()
            return resp


def _refusals(base: str, tok: str) -> list[tuple[str, dict[str, str], int, str]]:
    """(path, params, status, code) of every kind of SSE refusal before a stream opens."""
    return [
        ("/events/intents", {}, 401, "unauthorized"),
        ("/events/intents", {"token": "not-a-jwt"}, 401, "unauthorized"),
        ("/events/audit_logs", {"token": token(["intents"])}, 403, "forbidden"),
        ("/events/no_such_topic", {"token": tok}, 404, "unknown_topic"),
        ("/events/intents", {"token": tok, "last_event_id": "yesterday"}, 400, "bad_request"),
        ("/events/intents", {"token": tok, "close_after": "0"}, 400, "bad_request"),
        ("/events/Bad-Topic!", {"token": tok}, 400, "bad_request"),
    ]


async def test_refusals_readable_from_any_origin_without_allow_list(gateway, inject) -> None:
    tok = token(["*"])
    for path, params, status, code in _refusals(gateway.url, tok):
        resp = await _get(gateway.url + path, PAGE, **params)
        assert (resp.status_code, resp.json()["code"]) == (status, code), path
        assert resp.headers["access-control-allow-origin"] == "*", (path, params)
        # a non-browser request (no Origin) gets no CORS header at all
        plain = await _get(gateway.url + path, None, **params)
        assert plain.status_code == status
        assert "access-control-allow-origin" not in plain.headers
    ok = await _get(gateway.url + "/events/intents", PAGE, token=tok)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "*"


async def test_refused_upgrade_carries_cors_headers(gateway) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(gateway, tok="not-a-jwt", origin=PAGE)
    resp = info.value.response
    assert resp.status_code == 401
    assert json.loads(resp.body)["code"] == "unauthorized"
    assert resp.headers["access-control-allow-origin"] == "*"


@pytest.fixture
def listed(spawn, gw_env: dict[str, str]) -> Any:
    env = {
        **gw_env,
        "BRIDGE_GATEWAY_ALLOWED_ORIGINS": f"{PAGE}/, https://ops.example.com",
        "BRIDGE_GATEWAY_MAX_CONNECTIONS": "1",
    }
    return spawn("gateway", env)


async def test_allow_list_echoes_the_origin_on_refusals_too(listed, inject) -> None:
    tok = token(["*"])
    for path, params, status, code in _refusals(listed.url, tok):
        resp = await _get(listed.url + path, PAGE, **params)
        assert (resp.status_code, resp.json()["code"]) == (status, code), path
        assert resp.headers["access-control-allow-origin"] == PAGE, (path, params)
        assert resp.headers["vary"] == "Origin"

    # an origin outside the list is refused, and the refusal is not readable by that page
    evil = await _get(listed.url + "/events/intents", OTHER, token=tok)
    assert evil.status_code == 403 and evil.json()["code"] == "forbidden"
    assert "access-control-allow-origin" not in evil.headers
    assert evil.headers["vary"] == "Origin"
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(listed, tok=tok, origin=OTHER)
    assert info.value.response.status_code == 403
    assert "access-control-allow-origin" not in info.value.response.headers

    # the upgrade refusal for a listed origin names it
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(listed, tok=token(["*"], secret=SECRET[::-1]), origin=PAGE)
    assert info.value.response.status_code == 401
    assert info.value.response.headers["access-control-allow-origin"] == PAGE

    # 503 (at capacity: one connection allowed) while a stream holds the only slot
    headers = {"Origin": PAGE}
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream(
            "GET", listed.url + "/events/intents", params={"token": tok}, headers=headers
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == PAGE
            assert stream.headers["vary"] == "Origin"
            busy = await http.get(
                listed.url + "/events/intents", params={"token": tok}, headers=headers
            )
            assert busy.status_code == 503 and busy.json()["code"] == "unavailable"
            assert busy.headers["access-control-allow-origin"] == PAGE
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(listed, tok=tok, origin=PAGE)
            assert info.value.response.status_code == 503
            assert info.value.response.headers["access-control-allow-origin"] == PAGE
