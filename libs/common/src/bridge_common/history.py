"""The PostgreSQL history tier, as both sides see it: event ids and the rows of
`bridge.history` turned back into the exact event bytes that were published.

An event id is `<ms>-<n>` — the shape of a Redis stream entry id, so ids clients already
hold stay comparable — but it is assigned by the notifier's relay, not by Redis: per
topic, `ms = max(now_ms, last_ms)` and `n` counts up within one millisecond. The relay
keeps the last id of every topic in `bridge.history_topics`, in the same transaction as
the history rows, so ids keep increasing across any Redis restart and an event has the
same id in Redis and in the history (docs/architecture.md, "History").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .events import event_fragment_raw, event_fragment_too_large

#: (ms, n); compares like the id it stands for
Position = tuple[int, int]

HOUR_MS = 3_600_000

#: the events of one topic after a position, oldest first, in the columns `fragment` reads
READ_AFTER = (
    "SELECT ms, n, op, key, payload::text, size, "
    """to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), traceparent, """
    "txid::text, prior::text FROM bridge.history "
    "WHERE topic = %(topic)s AND (ms, n) > (%(ms)s, %(n)s) "
    # the bound on `ms` alone lets the planner skip the partitions before it
    "AND ms >= %(ms)s ORDER BY ms, n LIMIT %(limit)s"
)


def format_position(pos: Position) -> str:
    return f"{pos[0]}-{pos[1]}"


def parse_position(text: str | bytes) -> Position:
    """`"1700000000000-3"` → (1700000000000, 3); raises ValueError on anything else."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    ms, sep, n = text.partition("-")
    if not ms.isdigit() or (sep and not n.isdigit()) or not ms.isascii() or not n.isascii():
        raise ValueError(f"invalid event id {text[:64]!r}")
    return int(ms), int(n or 0)


def next_position(last: Position, now_ms: int) -> Position:
    """The id after `last` at wall-clock `now_ms`: never below `last`, even if the clock
    went back."""
    if now_ms > last[0]:
        return now_ms, 0
    return last[0], last[1] + 1


def event_meta(txid: str | None, prior: str | None) -> bytes:
    """What travels beside an event for the gateway only, never to clients: the writing
    transaction (`x`, decides the snapshot cut-over) and the old values an update changed
    (`o`, decides leave frames). Empty when there is neither (events of older relays)."""
    if txid is None:
        return b""
    if prior is None:
        return b'{"x":' + txid.encode() + b"}"
    return b'{"x":' + txid.encode() + b',"o":' + prior.encode() + b"}"


def fragment(row: Sequence[Any]) -> tuple[Position, bytes, bytes]:
    """A `READ_AFTER` row → (its position, the fragment that was published, its meta)."""
    ms, n, op, key, payload, size, ts, traceparent, txid, prior = row
    if payload is None:
        # a row too large to publish is not filtered: its old values are of no use either
        frag = event_fragment_too_large(op, key, size or 0, ts, traceparent)
        return (ms, n), frag, event_meta(txid, None)
    return (ms, n), event_fragment_raw(op, key, payload, ts, traceparent), event_meta(txid, prior)
