"""Which JSON path for bridge-common's events: msgspec (typed) or orjson (dicts)?

Measures, for a typical intent event, the operations the hot paths do: encode an event,
decode an event (typed vs plain), build the wire form from a row's JSON text (the
notifier's splice), and parse a client frame. `just bench encoding`.
"""

from __future__ import annotations

import argparse
import timeit

import msgspec
import orjson
from bridge_common import events

from bench.report import write_section

ROW = {
    "id": "6f1c2a9e-3b7d-4e0f-9a51-2d8c7e4b1f03",
    "title": "Refund order 48213",
    "status": "failed",
    "payload": {"amount": 129.5, "currency": "EUR", "items": [1, 2, 3], "note": "x" * 200},
    "created_at": "2026-11-28T17:00:00.123456+00:00",
    "updated_at": "2026-11-28T17:00:01.654321+00:00",
}
TS = "2026-11-28T17:00:01.654321+00:00"
EID = "1764349201654-0"


def _rate(fn, number: int) -> float:  # noqa: ANN001
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return number / best


def measure(number: int) -> list[tuple[str, float, float]]:
    ev = events.Event(topic="intents", id=EID, op="update", key=ROW["id"], data=ROW, ts=TS)
    as_dict = {
        "type": "event",
        "topic": "intents",
        "id": EID,
        "op": "update",
        "key": ROW["id"],
        "data": ROW,
        "ts": TS,
    }
    wire = events.encode_event(ev)
    row_text = orjson.dumps(ROW)
    frame = b'{"type":"subscribe","topic":"intents","filter":{"status":["failed","done"]}}'
    sub_dec = msgspec.json.Decoder(events.ClientMessage)
    rows = [
        (
            "encode event",
            _rate(lambda: events.encode_event(ev), number),
            _rate(lambda: orjson.dumps(as_dict), number),
        ),
        (
            "decode event (msgspec typed / orjson dict)",
            _rate(lambda: events.decode_event(wire), number),
            _rate(lambda: orjson.loads(wire), number),
        ),
        (
            "decode event to plain values",
            _rate(lambda: events.loads(wire), number),
            _rate(lambda: orjson.loads(wire), number),
        ),
        (
            "notifier splice from row JSON text",
            _rate(
                lambda: events.assemble_event(
                    "intents", EID, events.event_fragment_raw("update", ROW["id"], row_text, TS)
                ),
                number,
            ),
            _rate(lambda: orjson.dumps({**as_dict, "data": orjson.loads(row_text)}), number),
        ),
        (
            "client frame parse + validate (msgspec) / parse only (orjson)",
            _rate(lambda: sub_dec.decode(frame), number),
            _rate(lambda: orjson.loads(frame), number),
        ),
    ]
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench encoding")
    p.add_argument("--number", type=int, default=100_000)
    args = p.parse_args(argv)
    rows = measure(args.number)
    lines = [
        "## Event encoding: msgspec vs orjson (`just bench encoding`)",
        "",
        f"Operations per second (best of 5 × {args.number:,}), one intent event of "
        f"{len(events.encode_event(events.Event(topic='intents', id=EID, op='update', key='k', data=ROW, ts=TS)))} bytes.",  # noqa: E501
        "",
        "| operation | msgspec | orjson | msgspec / orjson |",
        "|---|---:|---:|---:|",
    ]
    for name, a, b in rows:
        lines.append(f"| {name} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |")
    lines += [
        "",
        "Choice: msgspec for bridge-common's typed models. It decodes and *validates* "
        "client frames and events faster than orjson merely parses them (validation would "
        "come on top of orjson). orjson encodes a plain dict faster than msgspec encodes a "
        "struct, but no hot path encodes an event object: the notifier splices the row's "
        "JSON text (read as text from PostgreSQL) into the wire form — the splice column "
        "compares that with parse-and-re-encode — and the gateway sends those same bytes "
        "to every client. Measured on the shared 2-core machine while other work ran; "
        "ratios are more reliable than absolute rates.",
    ]
    write_section("encoding", "\n".join(lines))
    print("\n".join(lines))
    return 0
