"""Resume: `since` / `Last-Event-ID` across a gateway crash (SIGKILL) and a graceful
restart — zero loss, zero duplicates — and `history_lost` when the stream was trimmed."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse

from tests.gateway.conftest import Injector, connect, recv_json, subscribe, token

TOTAL = 400


async def _produce(inject: Injector, topic: str, published: list[str], total: int) -> None:
    """Publish `total` events in small batches, a steady stream while the gateway dies."""
    n = 0
    while n < total:
        batch = [{"id": f"r{n + i}", "n": n + i} for i in range(min(5, total - n))]
        published += await inject.rows(topic, batch)
        n += len(batch)
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_ws_resume_across_gateway_restart(spawn, gw_env, inject, how) -> None:
    proc = spawn("gateway", gw_env)
    tok = token(["things"])
    received: list[str] = []
    published: list[str] = []
    close_codes: list[int | None] = []
    ws = await connect(proc, tok=tok)
    assert (await subscribe(ws, "things"))[-1]["recovered"] is False
    producer = asyncio.create_task(_produce(inject, "things", published, TOTAL))
    restarted = False
    while len(received) < TOTAL:
        try:
            msg = await recv_json(ws, 20)
        except websockets.ConnectionClosed as closed:
            close_codes.append(closed.rcvd.code if closed.rcvd else None)
            if not restarted:
                proc.stop()  # reaps the process (killed or exiting) and closes its log
                proc.start(wait_ready=False)
                proc.wait_ready(60)
                restarted = True
            ws = await connect(proc, tok=tok)
            replies = await subscribe(ws, "things", since=received[-1])
            assert replies[-1] == {"type": "subscribed", "topic": "things", "recovered": True}
            received += [m["id"] for m in replies if m["type"] == "event"]
            continue
        if msg["type"] == "event":
            received.append(msg["id"])
            if len(received) == 100 and not restarted:
                if how == signal.SIGKILL:
                    proc.kill()
                else:
                    proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    await producer
    await ws.close()
    assert received == published  # every event once, in order
    if how == signal.SIGTERM:
        assert close_codes == [1001]  # going away: reconnect elsewhere and resume
    else:
        assert close_codes == [None]  # crash: no close frame


async def test_sse_resume_with_last_event_id_across_crash(spawn, gw_env, inject) -> None:
    proc = spawn("gateway", gw_env)
    published: list[str] = []
    received: list[str] = []
    producer: asyncio.Task[None] | None = None
    last: str | None = None
    crashed = False
    async with httpx.AsyncClient(timeout=httpx.Timeout(20, read=20)) as http:
        while len(received) < TOTAL:
            headers = {"Authorization": f"Bearer {token(['intents'])}"}
            if last is not None:
                headers["Last-Event-ID"] = last
            try:
                async with aconnect_sse(
                    http, "GET", proc.url + "/events/intents", headers=headers
                ) as es:
                    async for sse in es.aiter_sse():
                        if sse.event == "subscribed":
                            data = json.loads(sse.data)
                            assert data["recovered"] is (last is not None)
                            if producer is None:
                                producer = asyncio.create_task(
                                    _produce(inject, "intents", published, TOTAL)
                                )
                        elif sse.event == "intents":
                            assert json.loads(sse.data)["id"] == sse.id
                            received.append(sse.id)
                            last = sse.id
                            if len(received) == 150 and not crashed:
                                proc.kill()
                                proc.stop()
                                crashed = True
                                proc.start(wait_ready=False)
                                proc.wait_ready(60)
                            if len(received) == TOTAL:
                                break
            except (httpx.RemoteProtocolError, httpx.ReadError):
                continue
    assert producer is not None
    await producer
    assert crashed and received == published


async def test_history_lost_when_stream_trimmed(gateway, inject, redis_client, namespace) -> None:
    small = Injector(redis_client, namespace, maxlen=10)
    ids = await small.rows("lossy", [{"id": i} for i in range(400)])
    tok = token(["lossy"])
    async with await connect(gateway, tok=tok) as ws:
        replies = await subscribe(ws, "lossy", since=ids[0])
        assert replies[0]["type"] == "error" and replies[0]["code"] == "history_lost"
        assert replies[0]["topic"] == "lossy" and replies[0]["message"]
        assert replies[-1] == {"type": "subscribed", "topic": "lossy", "recovered": False}
        assert len(replies) == 2
        [new] = await small.rows("lossy", [{"id": "after"}])
        msg = await recv_json(ws)
        assert msg["id"] == new  # continues live from now
        # a position still retained replays exactly what follows it
        replies = await subscribe(ws, "lossy", since=ids[-2])
        assert [m.get("id") for m in replies if m["type"] == "event"] == [ids[-1], new]
        assert replies[-1]["recovered"] is True
    frames: list[tuple[str, str]] = []
    async with httpx.AsyncClient(timeout=10) as http:
        params: dict[str, Any] = {"token": tok, "last_event_id": ids[1], "close_after": "1"}
        async with aconnect_sse(http, "GET", gateway.url + "/events/lossy", params=params) as es:
            async for sse in es.aiter_sse():
                frames.append((sse.event, sse.data))
                if sse.event == "subscribed":
                    await small.rows("lossy", [{"id": "sse-live"}])
    assert frames[0][0] == "error" and json.loads(frames[0][1])["code"] == "history_lost"
    assert frames[1] == ("subscribed", '{"type":"subscribed","topic":"lossy","recovered":false}')
    assert json.loads(frames[2][1])["data"] == {"id": "sse-live"}
