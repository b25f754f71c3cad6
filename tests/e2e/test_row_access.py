"""Row-level access (issue #16): a token's `filters` claim bounds what leaves the gateway.

Real PostgreSQL, the real notifier and gateway on this module's Redis namespace. Many
tenants, random inserts, updates that move rows between tenants and deletes; clients with
random token filters and narrowing client filters over WebSocket and SSE, live and
resuming with `since` / `Last-Event-ID` — from Redis, then from the PostgreSQL history
after the Redis stream is deleted. No frame ever carries a row outside the token's
filter, and each client receives exactly the events of the rows its effective filter
(token AND client) matches, in commit order. Widening is `forbidden`; a malformed claim
is a 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aredis
import websockets
from bridge_common.channels import Channels
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from tests.support.history import until, wait_history
from tests.support.processes import ServiceProcess
from tests.support.suite import JWT_SECRET, make_token

pytestmark = pytest.mark.timeout(300)

TENANTS = [f"t{i}" for i in range(6)]
KINDS = ["a", "b"]
SLOTS = 8
_topics = itertools.count()


# -- the suite ------------------------------------------------------------------------------


@dataclass
class Running:
    gw: ServiceProcess
    dsn: str
    redis_url: str
    namespace: str


@pytest.fixture(scope="module")
def suite(
    bridge_env: dict[str, str],
    migrated_dsn: str,
    redis_url: str,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    env = {
        **bridge_env,
        "BRIDGE_AUTH": "jwt",
        "BRIDGE_JWT_SECRET": JWT_SECRET,
        "BRIDGE_NOTIFIER_TOPICS_REFRESH": "0.5",
    }
    logs = Path(tmp_path_factory.mktemp("rowaccess"))
    notifier = ServiceProcess("notifier", env, logs).start(timeout=40)
    gw = ServiceProcess("gateway", env, logs).start(timeout=40)
    try:
        yield Running(gw, migrated_dsn, redis_url, namespace)
    finally:
        assert gw.stop() == 0, gw.logs()[-4000:]
        notifier.stop()


async def _new_topic(s: Running) -> tuple[str, str]:
    """A watched table with one seed row nobody may read; returns (topic, seed event id)."""
    topic = f"rows_{next(_topics)}"
    async with await psycopg.AsyncConnection.connect(s.dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE {} (id text PRIMARY KEY, tenant text NOT NULL, kind text NOT NULL)"
            ).format(sql.Identifier(topic))
        )
        await conn.execute("SELECT bridge.watch(%s::regclass)", (topic,))
        await conn.execute(
            sql.SQL("INSERT INTO {} VALUES ('seed', 'nobody', 'a')").format(sql.Identifier(topic))
        )
    (seed,) = await wait_history(s.dsn, topic, 1)
    r = aredis.Redis.from_url(s.redis_url)
    try:
        members = Channels(s.namespace).topics

        async def registered() -> bool:
            return bool(await r.sismember(members, topic))

        await until(registered, 20, f"{topic} registered")
    finally:
        await r.aclose()
    return topic, seed


# -- the model: rows, tenants and who may see what ---------------------------------------


@dataclass(frozen=True)
class Ev:
    op: str
    key: str
    tenant: str
    kind: str


def _as_list(v: Any) -> set[str]:
    return set(v) if isinstance(v, list) else {v}


@dataclass(frozen=True)
class Reader:
    token_tenants: frozenset[str]
    token_kinds: frozenset[str] | None
    client: dict[str, Any] | None
    transport: str

    def claim(self, topic: str) -> dict[str, Any]:
        flt: dict[str, Any] = {"tenant": sorted(self.token_tenants)}
        if self.token_kinds is not None:
            flt["kind"] = sorted(self.token_kinds)
        return {topic: flt}

    def token(self, topic: str) -> str:
        return make_token([topic], sub="reader", extra={"filters": self.claim(topic)})

    def token_allows(self, e: Ev) -> bool:
        return e.tenant in self.token_tenants and (
            self.token_kinds is None or e.kind in self.token_kinds
        )

    def sees(self, e: Ev) -> bool:
        if not self.token_allows(e):
            return False
        c = self.client or {}
        return ("tenant" not in c or e.tenant in _as_list(c["tenant"])) and (
            "kind" not in c or e.kind in _as_list(c["kind"])
        )


@st.composite
def readers(draw: st.DrawFn) -> Reader:
    tenants = draw(st.frozensets(st.sampled_from(TENANTS), min_size=1, max_size=3))
    kinds = draw(st.none() | st.frozensets(st.sampled_from(KINDS), min_size=1))
    client: dict[str, Any] = {}
    if draw(st.booleans()):
        narrowed = draw(st.lists(st.sampled_from(sorted(tenants)), min_size=1, unique=True))
        client["tenant"] = narrowed if len(narrowed) > 1 or draw(st.booleans()) else narrowed[0]
    if draw(st.booleans()):
        client["kind"] = draw(st.sampled_from(sorted(kinds) if kinds else KINDS))
    transport = draw(st.sampled_from(["ws", "sse"]))
    return Reader(tenants, kinds, client or None, transport)


ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "update", "update", "delete"]),
        st.integers(0, SLOTS - 1),
        st.sampled_from(TENANTS),
        st.sampled_from(KINDS),
    ),
    min_size=4,
    max_size=24,
)


async def _apply(dsn: str, topic: str, plan: list[tuple[str, int, str, str]]) -> list[Ev]:
    """Each operation in its own transaction; the events they produce, in commit order
    (an update that moves a row to another tenant carries the new tenant; a delete the
    row as it was)."""
    rows: dict[str, tuple[str, str]] = {}
    out: list[Ev] = []
    t = sql.Identifier(topic)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for op, slot, tenant, kind in plan:
            key = f"r{slot}"
            if key not in rows and op != "delete":
                await conn.execute(
                    sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(t), (key, tenant, kind)
                )
                rows[key] = (tenant, kind)
                out.append(Ev("insert", key, tenant, kind))
            elif key in rows and op == "delete":
                await conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(t), (key,))
                out.append(Ev("delete", key, *rows.pop(key)))
            elif key in rows:
                await conn.execute(
                    sql.SQL("UPDATE {} SET tenant = %s, kind = %s WHERE id = %s").format(t),
                    (tenant, kind, key),
                )
                rows[key] = (tenant, kind)
                out.append(Ev("update", key, tenant, kind))
        # fences: one row per (tenant, kind), so every reader sees at least one last event
        for tenant, kind in itertools.product(TENANTS, KINDS):
            key = f"f-{tenant}-{kind}"
            await conn.execute(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(t), (key, tenant, kind)
            )
            out.append(Ev("insert", key, tenant, kind))
    return out


def _ev(msg: dict[str, Any]) -> Ev:
    if msg["op"] == "leave":
        assert "data" not in msg, f"a leave frame carries the key only: {msg}"
        return Ev("leave", msg["key"], "", "")
    data = msg["data"]
    return Ev(msg["op"], msg["key"], data["tenant"], data["kind"])


def _expected(r: Reader, full: list[Ev]) -> list[Ev]:
    """What `r` gets of `full`: the events whose row it may see, and a `leave` frame (key
    only) for an update that takes a row it saw out of its effective filter."""
    state: dict[str, Ev] = {}
    out: list[Ev] = []
    for e in full:
        old = state.get(e.key)
        if e.op == "delete":
            state.pop(e.key, None)
        else:
            state[e.key] = e
        if r.sees(e):
            out.append(e)
        elif (
            e.op == "update"
            and old is not None
            and (old.tenant, old.kind) != (e.tenant, e.kind)
            and r.sees(old)
        ):
            out.append(Ev("leave", e.key, "", ""))
    return out


# -- the two transports ------------------------------------------------------------------


class Feed:
    """One reader's connection: every frame it got, until `subscribed` and after."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.subscribed = asyncio.Event()

    def events(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == "event"]


async def _ws(gw: ServiceProcess, topic: str, r: Reader, since: str | None, feed: Feed) -> None:
    url = gw.url.replace("http://", "ws://") + "/ws"
    headers = {"Authorization": f"Bearer {r.token(topic)}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        msg: dict[str, Any] = {"type": "subscribe", "topic": topic}
        if r.client:
            msg["filter"] = r.client
        if since:
            msg["since"] = since
        await ws.send(json.dumps(msg))
        async for raw in ws:
            frame = json.loads(raw)
            feed.frames.append(frame)
            assert frame["type"] in ("event", "subscribed"), frame
            if frame["type"] == "subscribed":
                feed.subscribed.set()


async def _sse(gw: ServiceProcess, topic: str, r: Reader, since: str | None, feed: Feed) -> None:
    headers = {"Authorization": f"Bearer {r.token(topic)}"}
    if since:
        headers["Last-Event-ID"] = since
    params = list((k, v) for k, vs in (r.client or {}).items() for v in sorted(_as_list(vs)))
    async with httpx.AsyncClient(timeout=httpx.Timeout(60)) as http:
        async with http.stream(
            "GET", f"{gw.url}/events/{topic}", params=params, headers=headers
        ) as resp:
            assert resp.status_code == 200, await resp.aread()
            kind, data = "message", []
            async for line in resp.aiter_lines():
                if line == "":
                    if data:
                        frame = json.loads("\n".join(data))
                        feed.frames.append(frame)
                        assert kind in (topic, "subscribed"), frame
                        if kind == "subscribed":
                            feed.subscribed.set()
                    kind, data = "message", []
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))


async def _open(
    gw: ServiceProcess, topic: str, r: Reader, since: str | None
) -> tuple[Feed, asyncio.Task[None]]:
    feed = Feed()
    run = _ws if r.transport == "ws" else _sse
    task = asyncio.create_task(run(gw, topic, r, since, feed))
    waiter = asyncio.create_task(feed.subscribed.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when="FIRST_COMPLETED")
    if task in done:
        waiter.cancel()
        task.result()  # raises what went wrong
        raise AssertionError(f"{r} closed before it was subscribed")
    assert waiter in done, f"{r} not subscribed in 30 s"
    return feed, task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed, httpx.HTTPError):
        await task


def _from_history(gw: ServiceProcess) -> float:
    for line in httpx.get(gw.url + "/metrics").text.splitlines():
        if line.startswith("bridge_gateway_history_db_events_total "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _check(feed: Feed, r: Reader, expected: list[Ev], what: str) -> None:
    got = [_ev(m) for m in feed.events()]
    # a leave frame has no row; that its key is one of the reader's rows is in `expected`
    leaked = [e for e in got if e.op != "leave" and not r.token_allows(e)]
    assert not leaked, f"{what}: rows outside the token's filter reached {r}: {leaked}"
    assert got == expected, f"{what}: {r}\n got      {got}\n expected {expected}"


async def _replay_all(
    s: Running, topic: str, seed: str, clients: list[Reader], full: list[Ev], what: str
) -> None:
    for r in clients:
        feed, task = await _open(s.gw, topic, r, seed)
        await _stop(task)
        # everything before `subscribed` is the replay: exact, nothing more can be in it
        first = feed.frames.index(next(f for f in feed.frames if f["type"] == "subscribed"))
        replay = Feed()
        replay.frames = feed.frames[:first]
        _check(replay, r, _expected(r, full), f"{what} ({r.transport})")


# -- tests ----------------------------------------------------------------------------------


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=ops, clients=st.lists(readers(), min_size=2, max_size=6))
def test_each_reader_gets_exactly_its_rows_live_and_replayed(
    suite: Running, plan: list[tuple[str, int, str, str]], clients: list[Reader]
) -> None:
    async def go() -> None:
        topic, seed = await _new_topic(suite)
        live = [await _open(suite.gw, topic, r, None) for r in clients]
        full = await _apply(suite.dsn, topic, plan)
        await wait_history(suite.dsn, topic, 1 + len(full))
        for r, (feed, task) in zip(clients, live, strict=True):
            want = _expected(r, full)

            async def arrived(
                feed: Feed = feed, n: int = len(want), task: asyncio.Task[None] = task
            ) -> bool:
                return len(feed.events()) >= n or task.done()

            await until(arrived, 30, f"live events for {r}")
            await _stop(task)
            _check(feed, r, want, "live")
        # resuming from the seed: Redis holds every event
        await _replay_all(suite, topic, seed, clients, full, "replay from Redis")
        # Redis lost the stream: the same replay comes from the PostgreSQL history
        rc = aredis.Redis.from_url(suite.redis_url)
        try:
            await rc.delete(Channels(suite.namespace).stream(topic))
        finally:
            await rc.aclose()
        before = _from_history(suite.gw)
        await _replay_all(suite, topic, seed, clients, full, "replay from the history")
        # it did come from PostgreSQL: every reader read the whole topic's history there
        assert _from_history(suite.gw) - before >= len(clients) * len(full)

    asyncio.run(go())


# -- refusals ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_topic(suite: Running) -> tuple[str, str]:
    return asyncio.run(_new_topic(suite))


WIDENING = [
    # token tenants t0,t1; the client asks for a tenant outside them
    ({"tenant": ["t0", "t1"]}, {"tenant": ["t1", "t2"]}),
    ({"tenant": "t0"}, {"tenant": "t9"}),
    # the token restricts kind too; the client's kind is not among the token's
    ({"tenant": ["t0"], "kind": "a"}, {"kind": "b"}),
]


@pytest.mark.parametrize(("token_filter", "client_filter"), WIDENING)
async def test_widening_is_forbidden(suite: Running, static_topic, token_filter, client_filter):
    topic, _ = static_topic
    tok = make_token([topic], extra={"filters": {topic: token_filter}})
    url = suite.gw.url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {tok}"}) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "filter": client_filter}))
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["type"] == "error" and err["code"] == "forbidden", err
        assert err["topic"] == topic and "beyond the token's filter" in err["message"]
        # the connection stays usable: a narrowing subscription is accepted
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "filter": token_filter}))
        ok = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ok["type"] == "subscribed", ok
    params = [(k, v) for k, vs in client_filter.items() for v in sorted(_as_list(vs))]
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(
            f"{suite.gw.url}/events/{topic}",
            params=params,
            headers={"Authorization": f"Bearer {tok}"},
        )
    assert resp.status_code == 403
    assert resp.json()["code"] == "forbidden"


MALFORMED: list[Any] = [
    "tenant=t0",
    ["t0"],
    {"TOPIC": "not an object"},
    {"TOPIC": {}},
    {"TOPIC": {"tenant": {"nested": 1}}},
    {"TOPIC": {"tenant": [["t0"]]}},
    {"TOPIC": {"tenant": []}},
    {"TOPIC": {"": "t0"}},
    {"TOPIC": {"x" * 65: "t0"}},
    {"TOPIC": {f"f{i}": 1 for i in range(17)}},
    {"TOPIC": {"tenant": [f"t{i}" for i in range(101)]}},
    {"TOPIC": {"tenant": "x" * 513}},
    {"not a topic!": {"tenant": "t0"}},
]


@pytest.mark.parametrize("claim", MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_filters_claim_is_401(suite: Running, static_topic, claim) -> None:
    topic, _ = static_topic
    claim = json.loads(json.dumps(claim).replace("TOPIC", topic))
    tok = make_token([topic], extra={"filters": claim})
    auth = {"Authorization": f"Bearer {tok}"}
    url = suite.gw.url.replace("http://", "ws://") + "/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers=auth):
            pass
    assert refused.value.response.status_code == 401
    async with httpx.AsyncClient(timeout=10) as http:
        for path in (f"/events/{topic}", f"/presence/{topic}"):
            resp = await http.get(suite.gw.url + path, headers=auth)
            assert resp.status_code == 401, path
            body = resp.json()
            assert body["code"] == "unauthorized"
            assert body["message"].startswith("invalid token: 'filters'"), body


async def test_presence_is_closed_to_row_filtered_tokens(suite: Running, static_topic) -> None:
    """Presence lists are topic-wide: a row-filtered token can neither read them nor be in
    them; a whole-topic reader's list does not show it."""
    topic, _ = static_topic
    filtered = make_token([topic], sub="tenant-t0", extra={"filters": {topic: {"tenant": "t0"}}})
    whole = make_token([topic], sub="operator")
    url = suite.gw.url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {filtered}"}
    ) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": topic, "presence": True}))
        err = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert err["code"] == "forbidden" and "presence" in err["message"], err
        await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"
        async with httpx.AsyncClient(timeout=10) as http:
            denied = await http.get(
                f"{suite.gw.url}/presence/{topic}", headers={"Authorization": f"Bearer {filtered}"}
            )
            assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
            listed = await http.get(
                f"{suite.gw.url}/presence/{topic}", headers={"Authorization": f"Bearer {whole}"}
            )
            assert listed.status_code == 200
            body = listed.json()
            assert all(p["sub"] != "tenant-t0" for p in body["present"]), body


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_python_sdk_needs_no_change(suite: Running, transport: str) -> None:
    """The SDK passes the token through: a narrowing filter gets the tenant's rows only, a
    widening one is the existing `SubscriptionRejected("forbidden")`."""
    from bridge_client import BridgeClient, SubscriptionRejected

    topic, _ = await _new_topic(suite)
    tok = make_token([topic], extra={"filters": {topic: {"tenant": ["t0", "t1"]}}})
    async with BridgeClient(suite.gw.url, token=tok, transport=transport) as client:  # type: ignore[arg-type]
        wide = client.subscribe(topic, {"tenant": ["t1", "t2"]})
        async with asyncio.timeout(15):
            with pytest.raises(SubscriptionRejected) as rejected:
                await anext(wide)
        assert rejected.value.code == "forbidden"
    async with BridgeClient(suite.gw.url, token=tok, transport=transport) as client:  # type: ignore[arg-type]
        narrow = client.subscribe(topic, {"tenant": "t1"})
        await narrow.wait_live()
        full = await _apply(suite.dsn, topic, [("insert", i, f"t{i % 3}", "a") for i in range(6)])
        want = [(e.key, e.tenant) for e in full if e.tenant == "t1"]
        got = []
        async with asyncio.timeout(30):
            while len(got) < len(want):
                ev = await anext(narrow)
                got.append((ev.key, ev.data["tenant"]))
        assert got == want
