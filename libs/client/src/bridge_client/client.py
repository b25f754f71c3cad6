"""`BridgeClient`: subscriptions over one gateway connection that survives restarts.

The client prefers one WebSocket carrying every subscription and falls back to one
Server-Sent Events stream per subscription when the gateway (or a proxy in front of it)
answers the upgrade with anything but 101/401/403/429/503. Either way each subscription
resumes from the last event it delivered, so the caller sees every event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec
from bridge_common.channels import InvalidTopic, check_topic
from bridge_common.events import PresenceEntry

from .backoff import Backoff
from .errors import (
    BridgeClientError,
    ClientClosed,
    DuplicateSubscription,
    InvalidSubscription,
    SubscriptionRejected,
    Unauthorized,
)
from .eventid import parse_event_id
from .presence import PresenceSnapshot
from .sse import SSEStream
from .subscription import FilterSpec, Subscription
from .websocket import FallbackToSSE, WebSocketSession

log = logging.getLogger("bridge_client")

TokenProvider = Callable[[], Awaitable[str | None] | str | None]
TransportName = Literal["auto", "websocket", "sse"]


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the gateway's WebSocket and SSE endpoints are, from one base URL."""

    websocket: str
    http: str

    @classmethod
    def from_url(cls, url: str) -> Endpoints:
        parts = urlsplit(url)
        http_scheme = {"http": "http", "ws": "http", "https": "https", "wss": "https"}.get(
            parts.scheme
        )
        if http_scheme is None or not parts.netloc:
            raise ValueError(f"gateway URL must be http(s):// or ws(s)://host[:port], not {url!r}")
        ws_scheme = "wss" if http_scheme == "https" else "ws"
        path = parts.path.rstrip("/")
        if path.endswith("/ws"):
            path = path[: -len("/ws")]
        return cls(
            websocket=urlunsplit((ws_scheme, parts.netloc, path + "/ws", "", "")),
            http=urlunsplit((http_scheme, parts.netloc, path, "", "")),
        )

    def events(self, topic: str) -> str:
        return f"{self.http}/events/{topic}"

    def presence(self, topic: str) -> str:
        return f"{self.http}/presence/{topic}"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Tuning knobs; the defaults suit a service talking to a nearby gateway."""

    transport: TransportName = "auto"
    backoff: Backoff = field(default_factory=Backoff)
    #: events buffered per subscription before it is paused (and resumed once drained)
    queue_size: int = 10_000
    #: largest frame accepted from the gateway (rows of any size are delivered whole)
    max_message_size: int = 16 * 1024 * 1024
    open_timeout: float = 10.0
    #: WebSocket keepalive: ping every `ping_interval`, drop the connection if no pong
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    #: SSE: the gateway sends a heartbeat at least every 15 s; longer silence = dead stream
    sse_read_timeout: float = 45.0
    #: consecutive 401/403 answers (each after asking `token_provider` again) before giving up
    max_auth_failures: int = 3
    #: consecutive `bad_request` answers to one subscribe before it is given up
    max_subscribe_retries: int = 5
    #: resume margin for a subscription that saw no event before its first disconnect
    clock_skew: float = 1.0
    max_subscriptions: int = 64


class BridgeClient:
    """Async client of the Bridge Lite gateway.

    ``async with BridgeClient(url, token=...) as client:
    async for event in client.subscribe("intents", filter={"status": "failed"}): ...``

    Delivery guarantee: each subscription yields every event of its topic (matching its
    filter) that was committed after it started — or after `since` — exactly once and
    in id order, across reconnects and gateway restarts, unless the gateway no longer
    retains the history to resume from; that is reported as `HistoryLost`.
    `token_provider` (an async or plain callable returning the token) is called before
    every connection attempt, so an expired token is replaced on reconnect and after a 401.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        options: ClientOptions | None = None,
        **overrides: object,
    ) -> None:
        if token is not None and token_provider is not None:
            raise ValueError("pass either token or token_provider, not both")
        self.endpoints = Endpoints.from_url(url)
        opts = options or ClientOptions()
        if overrides:
            opts = dataclasses.replace(opts, **overrides)  # type: ignore[arg-type]
        if opts.transport not in ("auto", "websocket", "sse"):
            raise ValueError(f"transport must be auto, websocket or sse, not {opts.transport!r}")
        self.options = opts
        self._token_value = token
        self._token_provider = token_provider
        self._subs: dict[str, Subscription] = {}
        self._sse_streams: dict[Subscription, asyncio.Task[None]] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._changed_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._closed = False
        self._fatal: BridgeClientError | None = None
        #: "websocket" or "sse" once decided
        self.transport: str | None = None
        #: successful connections so far (WebSocket connections, or SSE streams opened)
        self.connections = 0
        #: times `token_provider` was called
        self.token_requests = 0

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> BridgeClient:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start connecting in the background (done by ``async with``)."""
        if self._closed:
            raise ClientClosed("client is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bridge-client")

    async def close(self) -> None:
        """Close every subscription and the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for sub in list(self._subs.values()):
            sub._end()
        self._subs.clear()
        tasks = [
            t for t in [self._task, *self._sse_streams.values(), *self._retired] if t is not None
        ]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._sse_streams.clear()
        if self._http is not None:
            await self._http.aclose()

    # -- subscriptions -------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        filter: FilterSpec | None = None,
        since: str | None = None,
        *,
        presence: bool = False,
        snapshot: bool | int = False,
    ) -> Subscription:
        """Subscribe to `topic` (optionally only rows matching `filter`, optionally
        replaying what came after event id `since`). One subscription per topic.

        `presence=True`: `subscription.presence` keeps the list of who else is
        subscribed (WebSocket transport; over SSE use :meth:`presence`).

        `snapshot=True` (or a row limit, WebSocket only; SSE uses the gateway's limit):
        first the rows matching `filter` as `SnapshotRows` items, then every change
        after them exactly once — `Subscription.view()` keeps them as a dict by key."""
        if self._closed or self._task is None:
            raise ClientClosed("use `async with BridgeClient(...)` (or start()) first")
        if self._fatal is not None:
            raise self._fatal
        _validate(topic, filter, since)
        if snapshot is not False and since is not None:
            raise InvalidSubscription("snapshot and since exclude each other")
        if not isinstance(snapshot, bool) and (not isinstance(snapshot, int) or snapshot < 1):
            raise InvalidSubscription("snapshot is True, False or a positive row limit")
        if topic in self._subs:
            raise DuplicateSubscription(f"already subscribed to {topic!r}; close that one first")
        if len(self._subs) >= self.options.max_subscriptions:
            raise BridgeClientError(f"at most {self.options.max_subscriptions} subscriptions")
        sub = Subscription(
            self,
            topic,
            filter,
            since,
            queue_size=self.options.queue_size,
            clock_skew=self.options.clock_skew,
            presence=presence,
            snapshot=snapshot,
        )
        self._subs[topic] = sub
        if self.transport == "sse":
            self._start_sse(sub)
        self._changed()
        return sub

    async def presence(self, topic: str) -> PresenceSnapshot:
        """Who is subscribed to `topic` on every gateway replica now (one HTTP request)."""
        if self._closed:
            raise ClientClosed("client is closed")
        try:
            check_topic(topic)
        except InvalidTopic as exc:
            raise InvalidSubscription(str(exc)) from None
        token = await self._token()
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            r = await self.http().get(self.endpoints.presence(topic), headers=headers)
        except httpx.HTTPError as exc:
            raise BridgeClientError(f"presence of {topic}: {exc!r}") from exc
        if r.status_code == 401:
            raise Unauthorized(401)
        if r.status_code != 200:
            try:
                body = r.json()
                code, message = str(body.get("code")), str(body.get("message"))
            except ValueError:
                code, message = f"http_{r.status_code}", r.text[:200]
            raise SubscriptionRejected(code, message, topic)
        return _decode_presence(r.content)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs.values())

    def _forget(self, sub: Subscription) -> None:
        """Drop a closed or failed subscription (its topic is free again)."""
        if self._subs.get(sub.topic) is sub:
            del self._subs[sub.topic]
        task = self._sse_streams.pop(sub, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        self._changed()

    def _changed(self) -> None:
        self._changed_event.set()

    async def _wait_changed(self) -> None:
        await self._changed_event.wait()
        self._changed_event.clear()

    def _fail_all(self, error: BridgeClientError) -> None:
        self._fatal = error
        for sub in list(self._subs.values()):
            sub.fail(error)

    # -- tokens ------------------------------------------------------------------------

    @property
    def can_refresh_token(self) -> bool:
        return self._token_provider is not None

    async def _token(self) -> str | None:
        """The token for the next connection attempt; None when the provider failed
        (the attempt then goes ahead without one and is answered 401, which is retried)."""
        if self._token_provider is None:
            return self._token_value
        self.token_requests += 1
        try:
            result = self._token_provider()
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("bridge_client.token_provider_failed")
            return None
        return result

    # -- transports --------------------------------------------------------------------

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            opts = self.options
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(opts.open_timeout, read=opts.sse_read_timeout),
                headers={"Accept": "text/event-stream"},
            )
        return self._http

    async def _run(self) -> None:
        if self.options.transport != "sse":
            try:
                await WebSocketSession(self).run()
                return
            except FallbackToSSE as exc:
                log.warning("bridge_client.fallback_to_sse reason=%s", exc)
            except Exception as exc:
                # a bug, not a network condition: say so on every iterator rather than hang
                log.exception("bridge_client.crashed")
                self._fail_all(BridgeClientError(f"client connection loop failed: {exc!r}"))
                return
        self.transport = "sse"
        for sub in list(self._subs.values()):
            self._start_sse(sub)

    def _start_sse(self, sub: Subscription) -> None:
        if sub not in self._sse_streams:
            self._sse_streams[sub] = asyncio.create_task(
                SSEStream(self, sub).run(), name=f"bridge-client-sse-{sub.topic}"
            )


_SCALARS = (str, int, float, bool, type(None))


class _PresenceBody(msgspec.Struct):
    topic: str
    present: list[PresenceEntry]
    connections: int
    subs: int
    truncated: bool = False


_presence_decoder = msgspec.json.Decoder(_PresenceBody)


def _decode_presence(body: bytes) -> PresenceSnapshot:
    try:
        b = _presence_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise BridgeClientError(f"unexpected presence answer: {exc}") from None
    return PresenceSnapshot(b.topic, b.present, b.connections, b.subs, b.truncated)


def _validate(topic: str, filter: FilterSpec | None, since: str | None) -> None:
    """Refuse what the gateway would answer with `bad_request`, before it is sent."""
    try:
        check_topic(topic)
    except InvalidTopic as exc:
        raise InvalidSubscription(str(exc)) from None
    for name, value in (filter or {}).items():
        values = value if isinstance(value, list) else [value]
        if not isinstance(name, str) or not name or not values:
            raise InvalidSubscription(f"filter {name!r}: a field name and at least one value")
        if not all(isinstance(v, _SCALARS) for v in values):
            raise InvalidSubscription(
                f"filter {name!r}: values are strings, numbers, booleans or null"
            )
    if since is not None:
        try:
            parse_event_id(since)
        except ValueError:
            raise InvalidSubscription(f"since {since!r} is not an event id") from None
