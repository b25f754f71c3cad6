"""Message shapes that cross Redis or reach clients, with one fast JSON path (msgspec).

The event wire form is fixed by the contract:
``{"type":"event","topic":T,"id":ID,"op":..,"key":..,"data":{..},"ts":..}``.
A row larger than `BRIDGE_MAX_EVENT_BYTES` travels without its data:
``{…,"op":..,"key":..,"too_large":true,"size":N,"ts":..}``. A row written by a transaction
that set `bridge.traceparent` ends with ``,"traceparent":"00-…"`` (absent otherwise).
An event travels as a *fragment* (everything after ``id``) that :func:`assemble_event`
joins with the topic prefix and the id — the same bytes for live fan-out, for replay from
Redis and for replay from the PostgreSQL history, encoded once.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

#: `truncate`: the whole table was emptied (key "", data {}); drop the topic's rows
#: `leave`: (to a filtered subscriber) the row no longer matches its filter (key, no data)
Op = Literal["insert", "update", "delete", "truncate", "leave"]
Severity = Literal["debug", "info", "warning", "error", "critical"]

_encoder = msgspec.json.Encoder()


def dumps(obj: Any) -> bytes:
    """Encode any msgspec-supported value to JSON bytes."""
    return _encoder.encode(obj)


def loads(data: bytes | str) -> Any:
    """Decode JSON into plain Python values."""
    return msgspec.json.decode(data)


# -- events -------------------------------------------------------------------------------


class Event(msgspec.Struct, tag_field="type", tag="event", kw_only=True, omit_defaults=True):
    """One committed row change on a topic (`data` is None when the row was too large)."""

    topic: str
    id: str
    op: Op
    key: str
    data: dict[str, Any] | None = None
    ts: str
    #: the row was larger than the notifier's BRIDGE_MAX_EVENT_BYTES: `size` bytes, no data
    too_large: bool = False
    size: int | None = None
    #: the W3C traceparent the writing transaction set (`bridge.traceparent`), if any
    traceparent: str | None = None


_event_decoder = msgspec.json.Decoder(Event)


def decode_event(data: bytes | str) -> Event:
    """Parse and validate an event from its wire form."""
    return _event_decoder.decode(data)


def event_prefix(topic: str) -> bytes:
    """The bytes before the event id: ``{"type":"event","topic":"<topic>","id":"``."""
    return b'{"type":"event","topic":' + _encoder.encode(topic) + b',"id":"'


def event_fragment(op: str, key: str, data: Any, ts: str, traceparent: str | None = None) -> bytes:
    """The bytes after the event id, from Python values."""
    return event_fragment_raw(op, key, _encoder.encode(data), ts, traceparent)


def _tail(ts: str, traceparent: str | None) -> bytes:
    if traceparent is None:
        return b',"ts":' + _encoder.encode(ts) + b"}"
    return (
        b',"ts":' + _encoder.encode(ts) + b',"traceparent":' + _encoder.encode(traceparent) + b"}"
    )


def event_fragment_raw(
    op: str, key: str, data_json: bytes | str, ts: str, traceparent: str | None = None
) -> bytes:
    """The bytes after the event id, splicing already-encoded row JSON (no re-encode)."""
    if isinstance(data_json, str):
        data_json = data_json.encode()
    return (
        b'","op":'
        + _encoder.encode(op)
        + b',"key":'
        + _encoder.encode(key)
        + b',"data":'
        + data_json
        + _tail(ts, traceparent)
    )


def event_fragment_too_large(
    op: str, key: str, size: int, ts: str, traceparent: str | None = None
) -> bytes:
    """The bytes after the event id for a row larger than the limit: key and size, no data."""
    return (
        b'","op":'
        + _encoder.encode(op)
        + b',"key":'
        + _encoder.encode(key)
        + b',"too_large":true,"size":'
        + str(int(size)).encode()
        + _tail(ts, traceparent)
    )


#: how an event (or fragment) carrying a traceparent ends: the marker, 55 characters, `"}`
_TP_MARK = b',"traceparent":"'
_TP_TAIL = len(_TP_MARK) + 55 + 2


def fragment_traceparent(raw: bytes) -> str | None:
    """The traceparent an event's (or fragment's) bytes end with, without decoding them —
    the field is always last when present (see `event_fragment_raw`)."""
    if len(raw) < _TP_TAIL or raw[-_TP_TAIL : -_TP_TAIL + len(_TP_MARK)] != _TP_MARK:
        return None
    return raw[-57:-2].decode("ascii", "replace")


def assemble_event(topic: str, event_id: str | bytes, fragment: bytes) -> bytes:
    """Join prefix, id and fragment into the event's wire form."""
    if isinstance(event_id, str):
        event_id = event_id.encode()
    return event_prefix(topic) + event_id + fragment


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


# -- gateway protocol (client → server) ---------------------------------------------------

FilterValue = str | int | float | bool | None
Filter = dict[str, FilterValue | list[FilterValue]]


class SnapshotSpec(msgspec.Struct, forbid_unknown_fields=True):
    """`"snapshot": {"limit": N}` of a subscribe (at most BRIDGE_SNAPSHOT_MAX_ROWS rows)."""

    limit: int | None = None


class Subscribe(msgspec.Struct, tag_field="type", tag="subscribe", forbid_unknown_fields=True):
    topic: str
    filter: Filter | None = None
    since: str | None = None
    #: also send `presence` frames (who else is subscribed to the topic)
    presence: bool = False
    #: the rows matching the filter first (`snapshot` frames), then the events after them
    snapshot: bool | SnapshotSpec | None = None


class Unsubscribe(msgspec.Struct, tag_field="type", tag="unsubscribe", forbid_unknown_fields=True):
    topic: str


class Ping(msgspec.Struct, tag_field="type", tag="ping", forbid_unknown_fields=True):
    pass


ClientMessage = Subscribe | Unsubscribe | Ping
_client_decoder = msgspec.json.Decoder(ClientMessage)


def decode_client_message(frame: bytes | str) -> ClientMessage:
    """Parse one client frame; raises ``msgspec.DecodeError``/``ValidationError`` on junk."""
    msg: ClientMessage = _client_decoder.decode(frame)
    return msg


# -- gateway protocol (server → client) ---------------------------------------------------

ErrorCode = Literal[
    "bad_request",
    "forbidden",
    "unknown_topic",
    "too_many_subscriptions",
    "history_lost",
    "snapshot_unavailable",
    "snapshot_too_large",
    "unavailable",
    "unauthorized",
]


class Subscribed(msgspec.Struct, tag_field="type", tag="subscribed", omit_defaults=True):
    topic: str
    recovered: bool
    #: after a snapshot: the id to pass as `since` to continue after it
    position: str | None = None


class SnapshotFrame(msgspec.Struct, tag_field="type", tag="snapshot", omit_defaults=True):
    """Rows of a snapshot, primary-key order; the last frame says whether a limit cut it."""

    topic: str
    rows: list[dict[str, Any]]
    #: each row's event key (the `key` its events carry), in the order of `rows`
    keys: list[str] = []
    truncated: bool = False


class Pong(msgspec.Struct, tag_field="type", tag="pong"):
    pass


class ErrorMessage(msgspec.Struct, tag_field="type", tag="error", omit_defaults=True):
    code: ErrorCode
    message: str
    topic: str | None = None


class PresenceEntry(msgspec.Struct):
    """One connection present on a topic: the token's `sub`, an opaque connection id and
    the token's `info` claim (or null)."""

    sub: str
    conn: str
    info: Any = None


class Presence(msgspec.Struct, tag_field="type", tag="presence", kw_only=True):
    """Who joined and left a topic since the previous frame (the first one: everyone).

    `full` marks a frame whose `joins` is the whole list (it replaces what the client
    knew); `connections`/`subs` count every visible connection and distinct `sub` even
    when the list is `truncated` at the gateway's cap.
    """

    topic: str
    joins: list[PresenceEntry] = []
    leaves: list[PresenceEntry] = []
    full: bool = False
    connections: int = 0
    subs: int = 0
    truncated: bool = False


ServerMessage = Event | Subscribed | SnapshotFrame | Pong | ErrorMessage | Presence
_server_decoder = msgspec.json.Decoder(ServerMessage)


def decode_server_message(frame: bytes | str) -> ServerMessage:
    msg: ServerMessage = _server_decoder.decode(frame)
    return msg


# -- service heartbeats, metrics snapshots, alerts ----------------------------------------


class Heartbeat(msgspec.Struct, kw_only=True):
    """Written by every service instance every `BRIDGE_HEARTBEAT_INTERVAL` seconds."""

    service: str
    instance: str
    ts: float
    started_at: float
    interval: float
    status: dict[str, Any] = msgspec.field(default_factory=dict)
    version: str = "0.1.0"

    def stale(self, now: float | None = None, misses: int = 3) -> bool:
        """True when `misses` heartbeats in a row did not arrive."""
        return ((now if now is not None else time.time()) - self.ts) > self.interval * misses


_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def decode_heartbeat(data: bytes | str) -> Heartbeat:
    return _heartbeat_decoder.decode(data)


class MetricsSnapshot(msgspec.Struct, kw_only=True):
    """What the metrics API publishes every `BRIDGE_SNAPSHOT_INTERVAL`; the alerter reads it."""

    ts: float
    metrics: dict[str, float | None]
    source: str = ""


_snapshot_decoder = msgspec.json.Decoder(MetricsSnapshot)


def decode_snapshot(data: bytes | str) -> MetricsSnapshot:
    return _snapshot_decoder.decode(data)


class AlertNotice(msgspec.Struct, kw_only=True):
    """Webhook body of the contract; also the `data` of events on the `alerts` topic."""

    rule: str
    state: Literal["firing", "resolved"]
    severity: str
    value: float | None
    threshold: float
    summary: str
    started_at: str
    fingerprint: str


_alert_decoder = msgspec.json.Decoder(AlertNotice)


def decode_alert(data: bytes | str) -> AlertNotice:
    return _alert_decoder.decode(data)
