"""Auth: JWT HS256 before any upgrade, per-topic `forbidden`, origins, start-up checks."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time

import httpx
import pytest
import websockets
from bridge_common.jwt_secret import SHIPPED_SECRETS

from tests.gateway.conftest import SECRET, connect, recv_json, subscribe, token


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _alg_none_token() -> str:
    claims = {"sub": "evil", "exp": int(time.time()) + 600, "topics": ["*"]}
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


BAD_TOKENS = {
    "missing": None,
    "garbage": "not-a-jwt",
    "expired": token(["*"], ttl=-60),
    "wrong secret": token(
        ["*"], secret="another-secret-another-secret-another-secret-another-secret-x"
    ),
    "alg none": _alg_none_token(),
    "other algorithm": token(["*"], alg="HS512"),
    "no topics claim": token(None),
    "no exp": None,  # built below (PyJWT needs the claim left out)
}


def _no_exp_token() -> str:
    import jwt

    return jwt.encode({"sub": "x", "topics": ["*"]}, SECRET, algorithm="HS256")


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_get_401_before_upgrade(gateway, case) -> None:
    tok = _no_exp_token() if case == "no exp" else BAD_TOKENS[case]
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(gateway, tok=tok)
    assert info.value.response.status_code == 401
    body = json.loads(info.value.response.body)
    assert body["code"] == "unauthorized" and body["message"]
    # the same token in the query string, and over SSE
    params = {"token": tok} if tok else {}
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(gateway.url + "/events/intents", params=params)
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"


async def test_token_in_query_and_forbidden_topics(gateway, inject) -> None:
    path = "/ws?token=" + token(["intents"])
    async with await connect(gateway, path) as ws:
        [msg] = await subscribe(ws, "audit_logs")
        assert msg == {
            "type": "error",
            "code": "forbidden",
            "message": "token does not allow topic 'audit_logs'",
            "topic": "audit_logs",
        }
        assert (await subscribe(ws, "intents"))[-1] == {
            "type": "subscribed",
            "topic": "intents",
            "recovered": False,
        }


def _run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bridge_gateway"],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_refuses_to_start_without_secret(gw_env) -> None:
    env = {k: v for k, v in gw_env.items() if k not in ("BRIDGE_JWT_SECRET", "BRIDGE_AUTH")}
    result = _run_gateway(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BRIDGE_JWT_SECRET" in lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("BRIDGE_JWT_SECRET", "short-secret", "at least 32"),
        ("BRIDGE_JWT_SECRET", "x" * 31, "at least 32"),
        *[("BRIDGE_JWT_SECRET", v, "shipped") for v in sorted(SHIPPED_SECRETS)],
        ("BRIDGE_JWT_SECRET", "please-change-me-" + "0" * 40, "shipped"),
        ("BRIDGE_JWT_PREVIOUS_SECRETS", "change-me-to-a-long-random-secret", "shipped"),
        ("BRIDGE_JWT_PREVIOUS_SECRETS", "ok-" + "y" * 40 + ",too-short", "entry 2"),
    ],
)
def test_refuses_a_weak_or_public_secret(gw_env, variable: str, value: str, says: str) -> None:
    result = _run_gateway({**gw_env, variable: value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert variable in lines[0] and says in lines[0]
    assert value not in lines[0]  # a refused secret is not echoed


def test_bad_setting_is_one_line(gw_env) -> None:
    result = _run_gateway({**gw_env, "BRIDGE_GATEWAY_MAX_SUBSCRIPTIONS": "0"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "BRIDGE_GATEWAY_MAX_SUBSCRIPTIONS" in lines[0]


async def test_auth_disabled_and_origin_allow_list(spawn, gw_env, inject) -> None:
    env = {
        **gw_env,
        "BRIDGE_AUTH": "disabled",
        "BRIDGE_GATEWAY_ALLOWED_ORIGINS": "https://app.example.com, https://ops.example.com/",
    }
    env.pop("BRIDGE_JWT_SECRET")
    proc = spawn("gateway", env)
    # no token needed; non-browser clients send no Origin
    async with await connect(proc) as ws:
        assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"
    async with await connect(proc, origin="https://ops.example.com") as ws:
        await ws.send('{"type":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(proc, origin="https://evil.example.net")
    assert info.value.response.status_code == 403
    async with httpx.AsyncClient(timeout=10) as http:
        bad = await http.get(
            proc.url + "/events/intents", headers={"Origin": "https://evil.example.net"}
        )
        assert bad.status_code == 403


async def test_previous_secret_accepted_during_rotation(spawn, gw_env, inject) -> None:
    new = "rotated-" + secrets.token_urlsafe(48)
    env = {**gw_env, "BRIDGE_JWT_SECRET": new, "BRIDGE_JWT_PREVIOUS_SECRETS": f" {SECRET} ,"}
    proc = spawn("gateway", env)
    for secret in (new, SECRET):  # minted before and after the switch
        async with await connect(proc, tok=token(["intents"], secret=secret)) as ws:
            assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"
    for bad in (
        token(["intents"], secret="never-configured-" + "x" * 40),
        token(["intents"], secret=SECRET, ttl=-10),
    ):
        with pytest.raises(websockets.InvalidStatus) as info:
            await connect(proc, tok=bad)
        assert info.value.response.status_code == 401
    # once the old secret is dropped from the list, its tokens stop working
    plain = spawn("gateway", {**gw_env, "BRIDGE_JWT_SECRET": new})
    with pytest.raises(websockets.InvalidStatus) as info:
        await connect(plain, tok=token(["intents"], secret=SECRET))
    assert info.value.response.status_code == 401


async def test_connection_ends_when_its_token_expires(gateway, inject) -> None:
    async with await connect(gateway, tok=token(["intents"], ttl=1.5)) as ws:
        assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv_json(ws, 10)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "token expired")


async def test_huge_token_is_refused_promptly(gateway) -> None:
    """Beyond the header limits the upgrade is answered with a 4xx at once, never left hanging."""
    huge = "a" * 20_000
    for path, headers in (
        (f"/ws?token={huge}", None),
        ("/ws", {"Authorization": f"Bearer {huge}"}),
    ):
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(
                gateway.url.replace("http://", "ws://") + path,
                additional_headers=headers,
                open_timeout=5,
            )
        assert info.value.response.status_code in (414, 431)
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(gateway.url + "/healthz")).status_code == 200
