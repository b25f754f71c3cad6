"""Server-Sent Events: topics, filters, aliases, close_after, resume, heartbeats, errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.gateway.conftest import token


async def _collect(
    client: httpx.AsyncClient,
    url: str,
    *,
    until_subscribed: asyncio.Event | None = None,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> list[tuple[str, str, str]]:
    """(event, id, data) of every frame until the server ends the stream."""
    out = []
    async with aconnect_sse(
        client, "GET", url, params=params, headers=dict(headers or {})
    ) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        async for sse in source.aiter_sse():
            out.append((sse.event, sse.id, sse.data))
            if sse.event == "subscribed" and until_subscribed is not None:
                until_subscribed.set()
    return out


async def test_topic_stream_with_filter_and_close_after(gateway, inject) -> None:
    live = asyncio.Event()
    async with httpx.AsyncClient(timeout=15) as http:
        task = asyncio.create_task(
            _collect(
                http,
                gateway.url + "/events/intents",
                until_subscribed=live,
                status="failed",
                close_after="2",
                token=token(["intents"]),
            )
        )
        await asyncio.wait_for(live.wait(), 10)
        ids = await inject.rows(
            "intents",
            [
                {"id": "1", "status": "failed"},
                {"id": "2", "status": "ok"},
                {"id": "3", "status": "failed"},
                {"id": "4", "status": "failed"},
            ],
        )
        frames = await asyncio.wait_for(task, 15)
    assert frames[0] == (
        "subscribed",
        "",
        json.dumps(
            {"type": "subscribed", "topic": "intents", "recovered": False}, separators=(",", ":")
        ),
    )
    events = [f for f in frames if f[0] == "intents"]
    assert [(e[1], json.loads(e[2])["key"]) for e in events] == [(ids[0], "1"), (ids[2], "3")]
    assert json.loads(events[0][2])["id"] == ids[0]


async def test_aliases_intent_by_id_and_audit_logs(gateway, inject) -> None:
    tok = token(["*"])
    live_a, live_b = asyncio.Event(), asyncio.Event()
    async with httpx.AsyncClient(timeout=15) as http:
        one = asyncio.create_task(
            _collect(
                http,
                gateway.url + "/events/intents/abc",
                until_subscribed=live_a,
                close_after="2",
                headers={"Authorization": f"Bearer {tok}"},
            )
        )
        audit = asyncio.create_task(
            _collect(
                http,
                gateway.url + "/events/audit-logs",
                until_subscribed=live_b,
                close_after="1",
                severity="error",
                token=tok,
            )
        )
        await asyncio.wait_for(asyncio.gather(live_a.wait(), live_b.wait()), 10)
        await inject.rows("intents", [{"id": "zzz", "status": "x"}, {"id": "abc", "status": "y"}])
        await inject.rows("intents", [{"id": "abc", "status": "z"}], op="update")
        await inject.rows(
            "audit_logs", [{"id": 1, "severity": "info"}, {"id": 2, "severity": "error"}]
        )
        frames_one = await asyncio.wait_for(one, 15)
        frames_audit = await asyncio.wait_for(audit, 15)
    got = [json.loads(d) for e, _, d in frames_one if e == "intents"]
    assert [(m["op"], m["data"]["status"]) for m in got] == [("insert", "y"), ("update", "z")]
    [(event, _, data)] = [f for f in frames_audit if f[0] == "audit_logs"]
    assert json.loads(data)["data"] == {"id": 2, "severity": "error"}


async def test_resume_with_last_event_id_header_and_query(gateway, inject) -> None:
    ids = await inject.rows("things", [{"id": i} for i in range(5)])
    async with httpx.AsyncClient(timeout=15) as http:
        by_header = await _collect(
            http,
            gateway.url + "/events/things",
            headers={"Last-Event-ID": ids[1]},
            close_after="3",
            token=token(["things"]),
        )
        by_query = await _collect(
            http,
            gateway.url + "/events/things",
            last_event_id=ids[3],
            close_after="1",
            token=token(["things"]),
        )
    assert [i for e, i, _ in by_header if e == "things"] == ids[2:5]
    assert [i for e, i, _ in by_query if e == "things"] == ids[4:5]


async def test_heartbeat_comment(gateway, inject) -> None:
    chunks = []
    async with httpx.AsyncClient(timeout=15) as http:
        url = gateway.url + "/events/intents"
        async with http.stream("GET", url, params={"token": token(["intents"])}) as resp:
            async for chunk in resp.aiter_text():
                chunks.append(chunk)
                if ": ping" in "".join(chunks):
                    break
    assert ": ping\n\n" in "".join(chunks)


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/events/intents", {}, 401, "unauthorized"),
        ("/events/intents", {"token": "garbage"}, 401, "unauthorized"),
        ("/events/audit_logs", {"tok": "intents-only"}, 403, "forbidden"),
        ("/events/nothing_here", {"tok": "*"}, 404, "unknown_topic"),
        ("/events/intents", {"tok": "*", "close_after": "zero"}, 400, "bad_request"),
        ("/events/intents", {"tok": "*", "last_event_id": "abc"}, 400, "bad_request"),
    ],
)
async def test_refusals_are_plain_http_errors(gateway, inject, path, params, status, code) -> None:
    params = dict(params)
    tok = params.pop("tok", None)
    if tok is not None:
        params["token"] = token(["intents"] if tok == "intents-only" else ["*"])
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(gateway.url + path, params=params)
    assert resp.status_code == status
    body = resp.json()
    assert body["type"] == "error" and body["code"] == code and body["message"]


async def test_disconnects_release_connections_and_subscriptions(gateway, inject) -> None:
    """Closing an SSE stream (its 'unsubscribe') or a WebSocket frees everything it held."""
    import time

    from tests.gateway.conftest import connect, metric, subscribe

    def gauges() -> tuple[float, float]:
        return (
            metric(gateway, "bridge_gateway_connections"),
            metric(gateway, "bridge_gateway_subscriptions"),
        )

    async def settle(expected: tuple[float, float]) -> None:
        deadline = time.monotonic() + 10
        while gauges() != expected:
            assert time.monotonic() < deadline, gauges()
            await asyncio.sleep(0.05)

    base = gauges()
    live = asyncio.Event()
    async with httpx.AsyncClient(timeout=15) as http:
        url = gateway.url + "/events/intents"
        async with aconnect_sse(http, "GET", url, params={"token": token(["*"])}) as es:
            async for sse in es.aiter_sse():
                if sse.event == "subscribed":
                    live.set()
                    break
        ws = await connect(gateway, tok=token(["*"]))
        await subscribe(ws, "intents")
        await subscribe(ws, "audit_logs")
        await settle((base[0] + 1, base[1] + 2))  # the SSE stream is gone, the WS holds two
        await ws.close()
        await settle(base)
    assert live.is_set()


async def test_sse_stream_ends_on_graceful_shutdown(spawn, gw_env, inject) -> None:
    import signal

    proc = spawn("gateway", gw_env)
    frames: list[str] = []
    async with httpx.AsyncClient(timeout=15) as http:
        url = proc.url + "/events/intents"
        async with aconnect_sse(http, "GET", url, params={"token": token(["*"])}) as es:
            async for sse in es.aiter_sse():
                frames.append(sse.event)
                if sse.event == "subscribed":
                    proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            # the loop ends because the server ended the stream (going away)
    assert frames == ["subscribed"]
    assert proc.stop() == 0
