"""WebSocket protocol: subscribe / filter / unsubscribe / ping, many topics, bad frames."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.gateway.conftest import connect, events_until, recv_json, subscribe, token


async def test_subscribe_filter_unsubscribe_and_ping(gateway, inject) -> None:
    async with await connect(gateway, tok=token(["*"])) as ws:
        replies = await subscribe(ws, "intents", filter={"status": ["failed", "corrected"]})
        assert replies == [{"type": "subscribed", "topic": "intents", "recovered": False}]
        ids = await inject.rows(
            "intents",
            [
                {"id": "a", "status": "pending"},
                {"id": "b", "status": "failed"},
                {"id": "c", "status": "corrected"},
                {"id": "d", "status": "done"},
            ],
        )
        got = await events_until(ws, 2)
        assert [(m["id"], m["data"]["id"]) for m in got] == [(ids[1], "b"), (ids[2], "c")]
        assert got[0] == {
            "type": "event",
            "topic": "intents",
            "id": ids[1],
            "op": "insert",
            "key": "b",
            "data": {"id": "b", "status": "failed"},
            "ts": "2026-01-01T00:00:00+00:00",
        }
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_json(ws) == {"type": "pong"}

        await ws.send(json.dumps({"type": "unsubscribe", "topic": "intents"}))
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_json(ws) == {"type": "pong"}  # unsubscribe processed before
        await inject.rows("intents", [{"id": "e", "status": "failed"}])
        await ws.send(json.dumps({"type": "ping"}))
        # nothing from intents any more: the next message is the pong
        assert await recv_json(ws) == {"type": "pong"}


async def test_many_topics_scalar_filters_and_same_filter_groups(gateway, inject) -> None:
    tok = token(["intents", "audit_logs"])
    async with (
        await connect(gateway, tok=tok) as ws1,
        await connect(gateway, tok=tok) as ws2,
        await connect(gateway, tok=tok) as ws3,
    ):
        for ws in (ws1, ws2):
            await subscribe(ws, "intents", filter={"status": "failed"})
            await subscribe(ws, "audit_logs", filter={"severity": ["error"], "id": 7})
        await subscribe(ws3, "audit_logs")
        await inject.rows(
            "audit_logs", [{"id": 6, "severity": "error"}, {"id": 7, "severity": "error"}]
        )
        await inject.rows("intents", [{"id": "x", "status": "failed"}])
        for ws in (ws1, ws2):
            got = await events_until(ws, 2)
            assert [(m["topic"], m["key"]) for m in got] == [("audit_logs", "7"), ("intents", "x")]
        got3 = await events_until(ws3, 2)
        assert [m["key"] for m in got3] == ["6", "7"]


async def test_ws_intents_alias_subscribes_on_connect_with_query_filter(gateway, inject) -> None:
    path = "/ws/intents?status=failed&token=" + token(["intents"])
    async with await connect(gateway, path) as ws:
        assert await recv_json(ws) == {"type": "subscribed", "topic": "intents", "recovered": False}
        await inject.rows("intents", [{"id": "p", "status": "ok"}, {"id": "q", "status": "failed"}])
        [event] = await events_until(ws, 1)
        assert event["key"] == "q"


async def test_errors_keep_the_connection_open(gateway, inject) -> None:
    async with await connect(gateway, tok=token(["intents"])) as ws:
        bad = [
            ("not json", "bad_request"),
            ("[1, 2]", "bad_request"),
            ('{"type": "dance"}', "bad_request"),
            ('{"type": "subscribe"}', "bad_request"),
            ('{"type": "subscribe", "topic": "intents", "extra": 1}', "bad_request"),
            ('{"type": "subscribe", "topic": "no such/topic"}', "bad_request"),
            ('{"type": "subscribe", "topic": "intents", "since": "yesterday"}', "bad_request"),
            ('{"type": "subscribe", "topic": "intents", "filter": {"a": {"b": 1}}}', "bad_request"),
            ('{"type": "subscribe", "topic": "audit_logs"}', "forbidden"),
            ('{"type": "subscribe", "topic": "never_published"}', "forbidden"),
        ]
        for frame, code in bad:
            await ws.send(frame)
            msg = await recv_json(ws)
            assert msg["type"] == "error" and msg["code"] == code, (frame, msg)
            assert msg["message"]
        await ws.send(b'{"type": "ping"}')  # binary frames carry JSON too
        assert await recv_json(ws) == {"type": "pong"}
    async with await connect(gateway, tok=token(["*"])) as ws:
        [msg] = await subscribe(ws, "never_published")
        assert msg == {
            "type": "error",
            "code": "unknown_topic",
            "message": "no such topic 'never_published'",
            "topic": "never_published",
        }
        assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"


async def test_subscription_limit(gateway, inject, gw_env) -> None:
    topics = [f"t{i}" for i in range(65)]
    await inject.register(*topics)
    async with await connect(gateway, tok=token(["*"])) as ws:
        for t in topics[:64]:
            assert (await subscribe(ws, t))[-1]["type"] == "subscribed"
        [msg] = await subscribe(ws, topics[64])
        assert msg["code"] == "too_many_subscriptions" and msg["topic"] == topics[64]
        # re-subscribing to a topic already held replaces it rather than counting twice
        assert (await subscribe(ws, topics[0], filter={"id": 1}))[-1]["type"] == "subscribed"


async def test_oversize_frame_is_cut_with_1009(gateway) -> None:
    async with await connect(gateway, tok=token(["*"]), max_size=None) as ws:
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
        with pytest.raises(websockets.ConnectionClosed) as info:
            await recv_json(ws)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_flood_is_cut_with_1008(gateway) -> None:
    async with await connect(gateway, tok=token(["*"])) as ws:
        with pytest.raises(websockets.ConnectionClosed) as info:
            for _ in range(1000):
                await ws.send('{"type":"ping"}')
            while True:
                await recv_json(ws)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "rate limit exceeded")
    # the process is fine
    async with await connect(gateway, tok=token(["*"])) as ws:
        await ws.send('{"type":"ping"}')
        assert await recv_json(ws) == {"type": "pong"}


async def test_client_js_is_served(gateway) -> None:
    import httpx

    async with httpx.AsyncClient() as http:
        resp = await http.get(gateway.url + "/client.js")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/javascript")
    assert len(resp.content) > 100


async def test_heartbeat_reports_connections(gateway, redis_client, namespace) -> None:
    from bridge_common.channels import Channels
    from bridge_common.events import decode_heartbeat

    async def gateway_beat() -> dict:
        beats = await redis_client.hgetall(Channels(namespace).services)
        [raw] = [v for k, v in beats.items() if k.startswith(b"gateway/")]
        return decode_heartbeat(raw).status

    async with await connect(gateway, tok=token(["*"])) as ws:
        await subscribe(ws, "intents")
        async with await connect(gateway, tok=token(["*"])):
            for _ in range(50):
                status = await gateway_beat()
                if status.get("connections") == 2 and status.get("subscriptions") == 1:
                    break
                await asyncio.sleep(0.1)
            assert status["connections"] == 2 and status["subscriptions"] == 1


async def test_many_clients_subscribing_and_resuming_at_once(gateway, inject) -> None:
    """More concurrent resumes than the Redis pool has connections: all succeed."""
    ids = await inject.rows("things", [{"id": f"m{i}"} for i in range(3)])
    conns = await asyncio.gather(*(connect(gateway, tok=token(["things"])) for _ in range(150)))
    try:
        replies = await asyncio.gather(*(subscribe(ws, "things", since=ids[0]) for ws in conns))
        for r in replies:
            assert [m.get("id") for m in r] == [ids[1], ids[2], None]
            assert r[-1] == {"type": "subscribed", "topic": "things", "recovered": True}
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))
