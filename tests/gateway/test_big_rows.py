"""Rows of any size reach prompt readers whole: the slow-reader bound is in time and in
events, never the size of one frame (issue #22 items 2 and 4, gateway side). A 5 MB row
does not end an SSE stream, a resume from before it gets past it, and a 20 MB row does
not cut WebSocket subscribers that read."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway.conftest import connect, events_until, metric, subscribe, token

MB = 1024 * 1024


def _sse_events(resp: httpx.Response, n: int) -> list[dict]:
    """Read `n` event frames (not control frames) off an open SSE response."""
    out: list[dict] = []
    data: list[str] = []
    event = ""
    for line in resp.iter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            if event not in ("subscribed", "snapshot", "error"):
                out.append(json.loads("\n".join(data)))
                if len(out) == n:
                    return out
            assert event != "error", data
            data, event = [], ""
    raise AssertionError(f"stream ended after {len(out)} events")


@pytest.mark.parametrize("size", [5 * MB])
async def test_big_row_does_not_poison_sse(gateway, inject, size) -> None:
    tok = token(["things"])
    before = await inject.rows("things", [{"id": "before"}])
    blob = "b" * size
    url = gateway.url + "/events/things"
    headers = {"Authorization": f"Bearer {tok}"}
    with httpx.Client(timeout=30) as c:
        # live: the stream delivers the big row and goes on
        with c.stream("GET", url, headers=headers) as resp:
            assert resp.status_code == 200
            big_id = await inject.rows("things", [{"id": "big", "blob": blob}])
            after = await inject.rows("things", [{"id": "after"}])
            got = _sse_events(resp, 2)
        assert [e["id"] for e in got] == big_id + after
        assert len(got[0]["data"]["blob"]) == size
        # resume from before it, three times: the same three events, whole, every time
        for _ in range(3):
            with c.stream("GET", url, headers={**headers, "Last-Event-ID": before[0]}) as resp:
                again = _sse_events(resp, 2)
            assert [e["id"] for e in again] == big_id + after
            assert again[0]["data"]["blob"] == blob


async def test_twenty_megabyte_row_reaches_prompt_ws_readers(gateway, inject) -> None:
    tok = token(["things"])
    cut_before = metric(gateway, "bridge_gateway_slow_clients_dropped_total")
    readers = [await connect(gateway, tok=tok, max_size=None) for _ in range(3)]
    for ws in readers:
        await subscribe(ws, "things")
    blob = "z" * (20 * MB)
    ids = await inject.rows("things", [{"id": "huge", "blob": blob}])
    ids += await inject.rows("things", [{"id": f"small-{i}"} for i in range(50)])
    for ws in readers:
        got = [m for m in await events_until(ws, 51, timeout=60) if m["type"] == "event"]
        assert [m["id"] for m in got] == ids
        assert len(got[0]["data"]["blob"]) == len(blob)
    # a resume from before it passes it too
    resumed = await connect(gateway, tok=tok, max_size=None)
    first = ids[0].split("-")
    since = f"{first[0]}-{int(first[1]) - 1}" if int(first[1]) else f"{int(first[0]) - 1}-0"
    # replayed events come before `subscribed`
    got = [m for m in await subscribe(resumed, "things", since=since) if m["type"] == "event"]
    assert [m["id"] for m in got] == ids
    assert metric(gateway, "bridge_gateway_slow_clients_dropped_total") == cut_before
    for ws in [*readers, resumed]:
        await ws.close()
