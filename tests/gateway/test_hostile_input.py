"""Hostile input the gateway must answer with a clear error (issue #22 items 5, 7, 9, 10,
11, 12 and the Origin decision), over real sockets against a running gateway."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.gateway.conftest import SECRET, connect, recv_json, subscribe, token, ws_url
from tests.support.processes import ServiceProcess

PAGE = "https://page.example"


@pytest.fixture(scope="module")
def strict_gateway(gw_env, tmp_path_factory) -> Iterator[ServiceProcess]:
    env = {**gw_env, "BRIDGE_GATEWAY_ALLOWED_ORIGINS": " https://PAGE.example/ ,http://x.test:8080"}
    proc = ServiceProcess("gateway", env, Path(tmp_path_factory.mktemp("strict")))
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.logs()[-4000:]


def _raw_token(exp: object) -> str:
    return jwt.encode({"sub": "x", "exp": exp, "topics": ["*"]}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    ("exp", "reason"),
    [
        ("9999999999", "must be a number"),
        (1e308, "maximum token lifetime"),
        (10**20, "maximum token lifetime"),
        ("25h ahead", "maximum token lifetime"),
    ],
)
async def test_jwt_exp_must_be_a_bounded_number(gateway, exp, reason) -> None:
    # computed here, not at collection: xdist workers must collect the same test ids
    tok = _raw_token(int(time.time()) + 25 * 3600 if exp == "25h ahead" else exp)
    with pytest.raises(InvalidStatus) as info:
        await connect(gateway, tok=tok)
    assert info.value.response.status_code == 401
    assert reason in info.value.response.body.decode()
    r = httpx.get(gateway.url + "/events/intents", headers={"Authorization": f"Bearer {tok}"})
    assert r.status_code == 401 and reason in r.json()["message"]


async def test_jwt_within_the_lifetime_is_accepted(gateway, inject) -> None:
    async with await connect(gateway, tok=_raw_token(int(time.time()) + 23 * 3600)) as ws:
        assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"


@pytest.mark.parametrize(
    "since",
    [
        "18446744073709551616-0",  # 2**64
        "1-18446744073709551616",
        "99999999999999999999",
        "1-0\n",
        "\u0661-0",  # Arabic-Indic digit one
        " 1-0",
        "+1-0",
    ],
)
async def test_event_ids_are_strict(gateway, inject, since) -> None:
    async with await connect(gateway, tok=token(["*"])) as ws:
        [err] = await subscribe(ws, "intents", since=since)
        assert err["code"] == "bad_request" and "invalid event id" in err["message"]
    r = httpx.get(
        gateway.url + "/events/intents",
        params={"last_event_id": since, "token": token(["*"])},
    )
    assert r.status_code == 400 and "invalid event id" in r.json()["message"]


@pytest.mark.parametrize("topic", ["intents\n", "intents\r", "int\u0000ents", "intents "])
async def test_control_characters_in_topics_are_refused(gateway, inject, topic) -> None:
    async with await connect(gateway, tok=token(["*"])) as ws:
        [err] = await subscribe(ws, topic)
        assert err["code"] == "bad_request" and "invalid topic" in err["message"]
    r = httpx.get(gateway.url + "/events/" + quote(topic), params={"token": token(["*"])})
    assert r.status_code == 400 and "invalid topic" in r.json()["message"]


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"subscribe","topic":"\xff\xfe"}',
        b'{"type":"ping","\xc3\x28":1}',
        b'{"type":"subscribe","topic":"intents","filter":{"x":"\xed\xa0\x80"}}',
        ('{"type":"subscribe","topic":"a","filter":' + "[" * 10_000 + "]" * 10_000 + "}").encode(),
        ("[" * 10_000 + "]" * 10_000).encode(),
        '{"type":"subscribe","topic":"a","filter":' + '{"a":' * 5_000 + "1" + "}" * 5_000 + "}",
    ],
)
async def test_bad_frames_get_bad_request_and_keep_the_connection(gateway, frame) -> None:
    async with await connect(gateway, tok=token(["*"])) as ws:
        await ws.send(frame)
        err = await recv_json(ws)
        assert err["type"] == "error" and err["code"] == "bad_request", err
        await ws.send('{"type":"ping"}')
        assert (await recv_json(ws))["type"] == "pong"


async def test_refused_upgrades_log_once_at_info_without_the_token(gw_env, tmp_path) -> None:
    proc = ServiceProcess("gateway", gw_env, tmp_path).start()
    try:
        secret_token = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.c2lnbmF0dXJlLXNlY3JldA"
        for _ in range(3):
            with pytest.raises(InvalidStatus):
                await websockets.connect(ws_url(proc) + f"?token={secret_token}")
        r = httpx.get(proc.url + f"/events/intents?token={secret_token}&x=1")
        assert r.status_code == 401
        bearer = httpx.get(
            proc.url + "/events/intents", headers={"Authorization": f"Bearer {secret_token}"}
        )
        assert bearer.status_code == 401
    finally:
        assert proc.stop() == 0
    lines = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    text = proc.logs()
    assert secret_token not in text
    assert "c2VjcmV0LXBheWxvYWQ" not in text
    assert not [entry for entry in lines if entry.get("level") in ("error", "critical")]
    refusals = [e for e in lines if "WebSocket" in e["event"] and "401" in e["event"]]
    assert len(refusals) == 3 and all(e["level"] == "info" for e in refusals)
    assert all("[redacted]" in e["event"] for e in refusals)
    assert not [e for e in lines if "connection rejected" in e["event"]]


async def test_origin_matching_is_exact_serialisation(strict_gateway, inject) -> None:
    tok = token(["*"])
    # listed (the setting is normalised: case, spaces and the trailing slash)
    async with await connect(strict_gateway, tok=tok, origin=PAGE) as ws:
        assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"
    for origin in (PAGE + "/", PAGE + "/x", PAGE + ".evil.example", "null", "http://x.test"):
        with pytest.raises(InvalidStatus) as info:
            await connect(strict_gateway, tok=tok, origin=origin)
        assert info.value.response.status_code == 403, origin
        r = httpx.get(
            strict_gateway.url + "/events/intents",
            headers={"Authorization": f"Bearer {tok}", "Origin": origin},
        )
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    async with await connect(strict_gateway, tok=tok, origin="http://x.test:8080") as ws:
        assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"


def test_an_allow_list_entry_that_is_no_origin_exits_2(gw_env, tmp_path) -> None:
    env = {**gw_env, "BRIDGE_GATEWAY_ALLOWED_ORIGINS": "https://ok.example,not an origin"}
    proc = ServiceProcess("gateway", env, tmp_path).start(wait_ready=False)
    assert proc.proc is not None
    assert proc.proc.wait(30) == 2
    assert proc.stop() == 2  # closes the log file
    assert "BRIDGE_GATEWAY_ALLOWED_ORIGINS" in proc.logs()
