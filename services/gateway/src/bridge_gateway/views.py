"""What a filtered subscriber sees of one event, and where a snapshot ends in the stream.

A subscriber's view stays true: an event whose row matches its filter is delivered as it
is; an `update` whose new row does not match but whose old row did (the old values the
update changed travel beside the event as its meta, never to clients) becomes a `leave`
frame with the key and no data; anything else is not for it. Live fan-out (once per filter
group) and replay use the same functions, so both give the same frames.

:class:`Cutover` is the exact seam between a snapshot and the stream: an event belongs
after the snapshot iff its transaction is not visible in the snapshot's
`pg_current_snapshot()` (docs/architecture.md, "Snapshots").
"""

from __future__ import annotations

from typing import Any

import msgspec
from bridge_common.events import dumps, event_prefix

from .filters import RowFilter


class RowPart(msgspec.Struct):
    """The parts of an event's wire form a filter or a leave frame needs."""

    op: str = ""
    key: str = ""
    data: dict[str, Any] = {}
    ts: str = ""
    too_large: bool = False


class Meta(msgspec.Struct):
    """The gateway-only meta of an event (`bridge_common.history.event_meta`)."""

    #: the writing transaction's id
    x: int | None = None
    #: an update's old values of the columns it changed
    o: dict[str, Any] | None = None


_row_decoder = msgspec.json.Decoder(RowPart)
_meta_decoder = msgspec.json.Decoder(Meta)
NO_META = Meta()


def decode_row(raw: bytes) -> RowPart:
    try:
        return _row_decoder.decode(raw)
    except msgspec.MsgspecError:
        return RowPart()


def decode_meta(meta: bytes) -> Meta:
    if not meta:
        return NO_META
    try:
        return _meta_decoder.decode(meta)
    except msgspec.MsgspecError:
        return NO_META


def split_live(data: bytes) -> tuple[bytes, bytes]:
    """A live message → (event wire form, meta): the relay appends the meta after a
    newline, which no event's JSON contains (PostgreSQL and msgspec escape it)."""
    nl = data.rfind(b"\n")
    if nl < 0:
        return data, b""
    return data[:nl], data[nl + 1 :]


def admits(row_filter: RowFilter, row: RowPart) -> bool:
    # a `truncate` concerns every row, and an event without its row (larger than the
    # notifier's BRIDGE_MAX_EVENT_BYTES) cannot be filtered: a client's own filter lets it
    # through (told, never left with a silent gap), but a token-bound filter withholds it
    # — its key may be another tenant's row, and row-level access must not leak it
    if row.op == "truncate":
        return True
    if row.too_large:
        return not row_filter.bound
    return row_filter.matches(row.data)


def leaves(row_filter: RowFilter, row: RowPart, meta: Meta) -> bool:
    """An update whose old row matched `row_filter` (and whose new row does not)."""
    if row.op != "update" or not meta.o:
        return False
    return row_filter.matches({**row.data, **meta.o})


def leave_frame(topic: str, id_bytes: bytes, row: RowPart) -> bytes:
    """`{"type":"event","topic":T,"id":ID,"op":"leave","key":K,"ts":TS}` — no data."""
    return (
        event_prefix(topic)
        + id_bytes
        + b'","op":"leave","key":'
        + dumps(row.key)
        + b',"ts":'
        + dumps(row.ts)
        + b"}"
    )


def frame_for(
    row_filter: RowFilter | None, topic: str, id_bytes: bytes, raw: bytes, meta: Meta
) -> bytes | None:
    """The frame one subscriber gets for an event: itself, a leave frame, or nothing."""
    if row_filter is None:
        return raw
    row = decode_row(raw)
    if admits(row_filter, row):
        return raw
    if leaves(row_filter, row, meta):
        return leave_frame(topic, id_bytes, row)
    return None


class Cutover:
    """A `pg_current_snapshot()` (`xmin:xmax:xip,…`): which transactions it shows."""

    __slots__ = ("xmin", "xmax", "xip", "text")

    def __init__(self, text: str) -> None:
        xmin, xmax, xip = text.split(":")
        self.xmin = int(xmin)
        self.xmax = int(xmax)
        self.xip = frozenset(int(x) for x in xip.split(",") if x)
        self.text = text

    def visible(self, txid: int) -> bool:
        """The transaction's changes are in the snapshot (as pg_visible_in_snapshot;
        every transaction that wrote an outbox row committed)."""
        if txid >= self.xmax:
            return False
        return txid < self.xmin or txid not in self.xip

    def after(self, txid: int | None) -> bool:
        """An event belongs after the snapshot. An event without a transaction id (from
        a relay older than this protocol) cannot be placed: it is delivered, so the seam
        may repeat a change but never lose one."""
        return txid is None or not self.visible(txid)
