"""Presence over two gateway replicas: joins and leaves on both, hidden clients, a replica
killed with -9 (its clients leave when its lease runs out), `GET /presence/{topic}` and
its authorisation, and the list cap."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.gateway.conftest import Injector, connect, recv_json, subscribe, token
from tests.gateway.presence_support import HEARTBEAT, TOPIC, listed_subs, presence, watch
from tests.support.processes import ServiceProcess
from tests.support.waiting import eventually_async as eventually


async def test_two_replicas_join_leave_hidden_and_kill(
    spawn: Callable[..., ServiceProcess],
    presence_env: dict[str, str],
    inject: Injector,
    opened: Callable[..., Any],
) -> None:
    a = spawn("gateway", presence_env)
    b = spawn("gateway", presence_env)
    wa = await watch(a, "watch-a")
    wb = await watch(b, "watch-b", info={"name": "B watcher"})
    try:
        a1 = await opened(a, "a1", info={"name": "Ada", "role": "ops"})
        await opened(a, "a2")
        await opened(a, "hidden-a", presence=False)
        await opened(b, "b1")
        b2 = await opened(b, "b2")
        await opened(b, "hidden-b", presence=False)
        everyone = sorted(["watch-a", "watch-b", "a1", "a2", "b1", "b2"])
        await eventually(lambda: wa.subs() == everyone, what="A's list")
        await eventually(lambda: wb.subs() == everyone, what="B's list")
        # the info claim is passed through as given
        [ada] = [e for e in wa.members.values() if e["sub"] == "a1"]
        assert ada["info"] == {"name": "Ada", "role": "ops"}
        assert isinstance(ada["conn"], str) and ada["conn"]
        # the same list from either replica over HTTP; counts are of visible connections
        assert listed_subs(a) == everyone == listed_subs(b)
        counts = presence(b, count=1).json()
        assert counts == {"topic": TOPIC, "connections": 6, "subs": 6}
        # the last frame's counts agree
        assert wa.frames[-1]["connections"] == 6 and wa.frames[-1]["truncated"] is False

        # leaves on both replicas
        await a1.close()
        await b2.close()
        after = sorted(["watch-a", "watch-b", "a2", "b1"])
        await eventually(lambda: wa.subs() == after, what="A's list after leaves")
        await eventually(lambda: wb.subs() == after, what="B's list after leaves")

        # kill -9 B: its members leave when its lease runs out, nobody else does
        b.kill()
        killed = time.monotonic()
        only_a = sorted(["watch-a", "a2"])
        await eventually(
            lambda: wa.subs() == only_a, timeout=4 * HEARTBEAT + 2, what="B's members gone"
        )
        elapsed = time.monotonic() - killed
        assert listed_subs(a) == only_a
        print(f"kill -9 → leaves seen after {elapsed:.2f}s (heartbeat {HEARTBEAT}s)")

        # hidden clients were never listed anywhere
        assert not {"hidden-a", "hidden-b"} & (wa.seen_subs | wb.seen_subs)
        frames = wa.frames + wb.frames
        entries = [e for f in frames for e in f["joins"] + f["leaves"]]
        assert all(e["sub"] not in ("hidden-a", "hidden-b") for e in entries)
    finally:
        await wa.close()
        await wb.close()


async def test_first_frame_lists_everyone_and_frames_are_batched(
    spawn: Callable[..., ServiceProcess],
    presence_env: dict[str, str],
    inject: Injector,
    opened: Callable[..., Any],
) -> None:
    a = spawn("gateway", presence_env)
    for i in range(5):
        await opened(a, f"early-{i}")
    await eventually(lambda: len(listed_subs(a)) == 5, what="early joins in Redis")
    w = await watch(a, "late")
    try:
        await eventually(lambda: len(w.frames) >= 1, what="first frame")
        first = w.frames[0]
        assert first["full"] is True and first["leaves"] == []
        assert {e["sub"] for e in first["joins"]} == {f"early-{i}" for i in range(5)} | {"late"}
        # a burst of joins arrives in few frames, never more than one per 100 ms
        n0 = len(w.frames)
        await asyncio.gather(*(opened(a, f"burst-{i}") for i in range(30)))
        await eventually(lambda: len(w.members) == 36, what="burst listed")
        burst = w.frames[n0:]
        assert len(burst) < 30
    finally:
        await w.close()


async def test_list_cap_keeps_counts_right(
    spawn: Callable[..., ServiceProcess],
    presence_env: dict[str, str],
    inject: Injector,
    opened: Callable[..., Any],
) -> None:
    a = spawn("gateway", {**presence_env, "BRIDGE_PRESENCE_MAX_LIST": "3"})
    w = await watch(a, "w")
    try:
        sockets = [await opened(a, f"u{i}") for i in range(5)]
        body = await eventually(
            lambda: (r := presence(a).json())["connections"] == 6 and r, what="6 connections"
        )
        assert len(body["present"]) == 3 and body["truncated"] is True and body["subs"] == 6
        await eventually(lambda: w.frames and w.frames[-1]["connections"] == 6, what="counts")
        assert len(w.members) == 3 and w.frames[-1]["truncated"] is True
        # a listed member leaves: its place is filled by one not shown yet
        leaving = next(e for e in w.members.values() if e["sub"] != "w")
        await sockets[int(leaving["sub"][1:])].close()
        await eventually(
            lambda: w.frames[-1]["connections"] == 5 and len(w.members) == 3, what="refill"
        )
        assert leaving["conn"] not in w.members
    finally:
        await w.close()


async def test_presence_endpoint_authorisation(gateway: ServiceProcess, inject: Injector) -> None:
    url = f"{gateway.url}/presence/{TOPIC}"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer junk"}).status_code == 401
    other = httpx.get(url, headers={"Authorization": f"Bearer {token(['intents'])}"})
    assert other.status_code == 403 and other.json()["code"] == "forbidden"
    ok = httpx.get(url, params={"token": token([TOPIC])})
    assert ok.status_code == 200 and ok.json()["topic"] == TOPIC
    star = httpx.get(url, params={"token": token(["*"]), "count": "1"})
    assert star.status_code == 200 and set(star.json()) == {"topic", "connections", "subs"}
    bad = httpx.get(f"{gateway.url}/presence/no%20such", params={"token": token(["*"])})
    assert bad.status_code == 400
    missing = httpx.get(f"{gateway.url}/presence/nothing_here", params={"token": token(["*"])})
    assert missing.status_code == 404 and missing.json()["code"] == "unknown_topic"
    junk = httpx.get(url, params={"token": token([TOPIC]), "count": "maybe"})
    assert junk.status_code == 400


async def test_subscribe_without_presence_gets_no_frames(
    gateway: ServiceProcess, inject: Injector
) -> None:
    async with await connect(gateway, tok=token([TOPIC], sub="quiet")) as ws:
        assert (await subscribe(ws, TOPIC))[-1]["type"] == "subscribed"
        await eventually(lambda: "quiet" in listed_subs(gateway), what="quiet listed")
        [event_id] = await inject.rows(TOPIC, [{"id": 1}])
        msg = await recv_json(ws)
        assert msg["type"] == "event" and msg["id"] == event_id


async def test_one_connection_keeps_its_conn_id_across_topics_and_resubscribes(
    gateway: ServiceProcess, inject: Injector
) -> None:
    def entry(topic: str) -> list[dict[str, Any]]:
        r = presence(gateway, topic)
        return [e for e in r.json()["present"] if e["sub"] == "multi"]

    tok = token([TOPIC, "intents"], sub="multi")
    async with await connect(gateway, tok=tok) as ws:
        assert (await subscribe(ws, TOPIC))[-1]["type"] == "subscribed"
        assert (await subscribe(ws, "intents"))[-1]["type"] == "subscribed"
        [on_things] = await eventually(lambda: entry(TOPIC), what="listed on things")
        [on_intents] = await eventually(lambda: entry("intents"), what="listed on intents")
        assert on_things["conn"] == on_intents["conn"]
        # subscribing again (new filter) replaces the subscription, not the connection
        await ws.send(json.dumps({"type": "unsubscribe", "topic": "intents"}))
        await eventually(lambda: not entry("intents"), what="left intents")
        assert (await subscribe(ws, TOPIC, filter={"id": 1}))[-1]["type"] == "subscribed"
        assert entry(TOPIC) == [on_things]
    await eventually(lambda: not entry(TOPIC), what="left on close")
