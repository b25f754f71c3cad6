"""Load and observers for end-to-end tests and the soak: writers that commit intents and
audit logs at a steady rate and remember exactly what committed, and WS / SSE clients that
consume through the gateway, resume after every disconnect and record what they saw.

Writers tolerate the database going away: a transaction whose COMMIT outcome is unknown
(connection lost during commit) is resolved afterwards by looking the row up by its
client-chosen identity, so "committed" is exact, never a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import psycopg
from psycopg.types.json import Jsonb
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus, WebSocketException

#: what one committed writer transaction produced: an intent and one audit log
SEVERITIES = ("debug", "info", "info", "info", "warning", "error")


@dataclass
class WriterStats:
    committed_intents: set[str] = field(default_factory=set)
    committed_markers: set[str] = field(default_factory=set)
    uncertain: list[tuple[str, str]] = field(default_factory=list)
    failures: int = 0
    commit_times: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # committed intent ids, commit order


class Writer:
    """Commits one intent + one audit log per transaction, `rate` transactions a second.

    The audit log carries `details.marker` (and the intent's id), so the test can map
    markers to the database's `audit_logs.id` at the end and check the ETL target.
    """

    def __init__(self, dsn: str, rate: float, *, payload_bytes: int = 0, name: str = "w") -> None:
        self.dsn = dsn
        self.interval = 1.0 / rate
        self.payload = "x" * payload_bytes
        self.name = name
        self.stats = WriterStats()
        self._n = 0

    async def run(self, stop: asyncio.Event) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                next_at += self.interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if stop.is_set():
                        break
                else:
                    next_at = time.monotonic()  # fell behind (outage): no burst catch-up
                if conn is None or conn.closed:
                    try:
                        conn = await psycopg.AsyncConnection.connect(self.dsn, connect_timeout=2)
                    except psycopg.OperationalError:
                        self.stats.failures += 1
                        continue
                await self._one(conn)
        finally:
            if conn is not None:
                await conn.close()

    async def _one(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._n += 1
        intent_id = str(uuid.uuid4())
        marker = f"{self.name}-{self._n}-{uuid.uuid4().hex[:6]}"
        status = ("pending", "running", "failed", "done")[self._n % 4]
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO intents (id, title, status, payload) VALUES (%s, %s, %s, %s)",
                    (intent_id, f"intent {marker}", status, Jsonb({"pad": self.payload})),
                )
                await conn.execute(
                    "INSERT INTO audit_logs (intent_id, actor, action, severity, details)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (
                        intent_id,
                        self.name,
                        "intent.created",
                        SEVERITIES[self._n % len(SEVERITIES)],
                        Jsonb({"marker": marker}),
                    ),
                )
        except psycopg.OperationalError:
            # the commit may or may not have happened: resolve later by lookup
            self.stats.uncertain.append((intent_id, marker))
            self.stats.failures += 1
            return
        except psycopg.Error:
            self.stats.failures += 1
            return
        self.stats.committed_intents.add(intent_id)
        self.stats.committed_markers.add(marker)
        self.stats.commit_times[intent_id] = time.time()
        self.stats.order.append(intent_id)

    async def resolve_uncertain(self) -> None:
        """Decide each unknown-outcome transaction by looking its intent up."""
        if not self.stats.uncertain:
            return
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            for intent_id, marker in self.stats.uncertain:
                cur = await conn.execute("SELECT 1 FROM intents WHERE id = %s", (intent_id,))
                if await cur.fetchone():
                    self.stats.committed_intents.add(intent_id)
                    self.stats.committed_markers.add(marker)
        self.stats.uncertain.clear()


async def audit_ids_for(dsn: str, markers: set[str]) -> dict[str, str]:
    """marker → audit_logs.id (as text, the event key) for committed audit logs."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT details->>'marker', id::text FROM audit_logs"
            " WHERE details->>'marker' = ANY(%s)",
            (list(markers),),
        )
        return {m: i for m, i in await cur.fetchall()}


# -- consumers -----------------------------------------------------------------------------


@dataclass
class Seen:
    """What one client received on one topic, in order, and what went wrong."""

    keys: list[tuple[str, str]] = field(default_factory=list)  # (op, key)
    ids: list[str] = field(default_factory=list)
    received_at: dict[str, float] = field(default_factory=dict)  # key → first receipt
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0
    last_id: str | None = None

    def count_of(self, op: str) -> Counter[str]:
        return Counter(k for o, k in self.keys if o == op)

    def record(self, event: dict[str, Any]) -> None:
        self.keys.append((event["op"], event["key"]))
        self.ids.append(event["id"])
        self.last_id = event["id"]
        self.received_at.setdefault(event["key"], time.time())


class _GatewayConsumer:
    """A hand-written client of one topic that fails over between gateways and resumes
    from the last id it saw."""

    default_name = "client"

    def __init__(
        self, gateways: Sequence[str], topic: str, token: str | None, *, name: str | None = None
    ) -> None:
        self.gateways = list(gateways)
        self.topic = topic
        self.token = token
        self.name = name or self.default_name
        self.seen = Seen()
        self.live = asyncio.Event()


class WsConsumer(_GatewayConsumer):
    """One WebSocket client on `topic`, resuming with `since` after every disconnect and
    failing over between gateways."""

    default_name = "ws"

    def _url(self, base: str) -> str:
        url = base.replace("http://", "ws://") + "/ws"
        return url + (f"?token={self.token}" if self.token else "")

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            base = self.gateways[attempt % len(self.gateways)]
            attempt += 1
            try:
                async with ws_connect(self._url(base), open_timeout=3, max_size=2**24) as ws:
                    sub: dict[str, Any] = {"type": "subscribe", "topic": self.topic}
                    if self.seen.last_id is not None:
                        sub["since"] = self.seen.last_id
                    await ws.send(orjson.dumps(sub).decode())
                    while not stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        msg = orjson.loads(raw)
                        kind = msg.get("type")
                        if kind == "event" and msg.get("topic") == self.topic:
                            self.seen.record(msg)
                        elif kind == "subscribed":
                            self.live.set()
                        elif kind == "error":
                            self.seen.errors.append(f"{msg.get('code')}: {msg.get('message')}")
                        elif kind == "event":
                            self.seen.errors.append(f"foreign topic {msg.get('topic')}")
            except (OSError, WebSocketException, InvalidStatus, TimeoutError):
                pass
            if not stop.is_set():
                self.seen.reconnects += 1
                await asyncio.sleep(0.2)


class SseConsumer(_GatewayConsumer):
    """One SSE client on `/events/{topic}`, resuming with `Last-Event-ID`."""

    default_name = "sse"

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        timeout = httpx.Timeout(5.0, read=20.0)
        async with httpx.AsyncClient(timeout=timeout) as http:
            while not stop.is_set():
                base = self.gateways[attempt % len(self.gateways)]
                attempt += 1
                headers = {"Accept": "text/event-stream"}
                if self.token:
                    headers["Authorization"] = f"Bearer {self.token}"
                if self.seen.last_id is not None:
                    headers["Last-Event-ID"] = self.seen.last_id
                # the read loop is cancelled as a whole on stop: cancelling a half-read
                # line iterator would leave it unusable
                reader = asyncio.create_task(
                    self._stream(http, f"{base}/events/{self.topic}", headers)
                )
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for t in (reader, stopper):
                    t.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError, OSError):
                    await reader
                await asyncio.gather(stopper, return_exceptions=True)
                if not stop.is_set():
                    self.seen.reconnects += 1
                    await asyncio.sleep(0.2)

    async def _stream(self, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        async with http.stream("GET", url, headers=headers) as resp:
            if resp.status_code != 200:
                self.seen.errors.append(f"HTTP {resp.status_code}")
                return
            self.live.set()
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line == "":
                    if data:
                        self._frame(orjson.loads("\n".join(data)))
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))

    def _frame(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "event" and msg.get("topic") == self.topic:
            self.seen.record(msg)
        elif msg.get("type") == "event":
            self.seen.errors.append(f"foreign topic {msg.get('topic')}")
        elif msg.get("type") == "error":
            self.seen.errors.append(f"{msg.get('code')}: {msg.get('message')}")


def exactly_once(seen: Seen, op: str, expected: set[str]) -> tuple[set[str], set[str], set[str]]:
    """(missing, duplicated, unexpected) keys of `op` events against `expected`."""
    counts = seen.count_of(op)
    missing = expected - counts.keys()
    dups = {k for k, c in counts.items() if c > 1}
    unexpected = set(counts) - expected
    return missing, dups, unexpected


class SdkConsumer:
    """A client written with the Python SDK (`bridge_client`), which owns reconnect and
    resume itself; `transport` forces "websocket" or "sse"."""

    def __init__(
        self, gateway: str, topic: str, token: str | None, *, transport: str = "auto",
        name: str = "sdk",
    ) -> None:  # fmt: skip
        self.gateway = gateway
        self.topic = topic
        self.token = token
        self.transport = transport
        self.name = name
        self.seen = Seen()
        self.live = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        from bridge_client import BridgeClient, BridgeClientError

        async with BridgeClient(self.gateway, token=self.token, transport=self.transport) as c:
            sub = c.subscribe(self.topic)
            await sub.wait_live()
            self.live.set()

            async def consume() -> None:
                async for event in sub:
                    self.seen.record(
                        {"op": event.op, "key": event.key, "id": event.id, "topic": event.topic}
                    )

            reader = asyncio.create_task(consume())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if reader.done() and reader.exception() is not None:
                self.seen.errors.append(repr(reader.exception()))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, BridgeClientError):
                await reader
            self.seen.reconnects = max(0, c.connections - 1)
