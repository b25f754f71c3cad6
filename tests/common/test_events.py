from __future__ import annotations

import msgspec
import orjson
import pytest
from bridge_common import events


def test_assembled_event_is_the_contract_shape() -> None:
    frag = events.event_fragment("insert", "k1", {"a": 1, "s": 'é"x'}, "2026-01-01T00:00:00Z")
    raw = events.assemble_event("intents", "1700000000000-0", frag)
    doc = orjson.loads(raw)
    assert list(doc) == ["type", "topic", "id", "op", "key", "data", "ts"]
    assert doc == {
        "type": "event",
        "topic": "intents",
        "id": "1700000000000-0",
        "op": "insert",
        "key": "k1",
        "data": {"a": 1, "s": 'é"x'},
        "ts": "2026-01-01T00:00:00Z",
    }
    ev = events.decode_event(raw)
    assert ev.id == "1700000000000-0" and ev.data["a"] == 1
    assert events.encode_event(ev) == raw


def test_raw_fragment_splices_row_json_unchanged() -> None:
    row = '{"id": 5, "big": "' + "x" * 10000 + '"}'
    raw = events.assemble_event("t", "1-1", events.event_fragment_raw("update", "5", row, "ts"))
    assert orjson.loads(raw)["data"]["big"] == "x" * 10000


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type":"subscribe","topic":"intents","filter":{"status":["a","b"]},"since":"1-0"}',
        b'{"type":"unsubscribe","topic":"intents"}',
        b'{"type":"ping"}',
    ],
)
def test_client_messages_decode(frame: bytes) -> None:
    msg = events.decode_client_message(frame)
    assert type(msg).__name__.lower() == orjson.loads(frame)["type"]


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b"[]",
        b'{"type":"dance"}',
        b'{"type":"subscribe"}',
        b'{"type":"subscribe","topic":5}',
        b'{"type":"ping","extra":1}',
        b'{"type":"subscribe","topic":"x","filter":{"a":{"nested":1}}}',
    ],
)
def test_junk_client_frames_raise_decode_errors(frame: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        events.decode_client_message(frame)


def test_server_messages_roundtrip() -> None:
    for msg in (
        events.Subscribed(topic="t", recovered=True),
        events.Pong(),
        events.ErrorMessage(code="forbidden", message="no"),
    ):
        assert events.decode_server_message(events.dumps(msg)) == msg
    assert orjson.loads(events.dumps(events.ErrorMessage(code="bad_request", message="m"))) == {
        "type": "error",
        "code": "bad_request",
        "message": "m",
    }


def test_heartbeat_staleness() -> None:
    hb = events.Heartbeat(
        service="gateway",
        instance="g1",
        ts=100.0,
        started_at=90.0,
        interval=5.0,
        status={"connections": 3},
    )
    assert not hb.stale(now=110.0)
    assert hb.stale(now=116.0)
    assert events.decode_heartbeat(events.dumps(hb)) == hb


def test_alert_notice_has_the_webhook_fields() -> None:
    a = events.AlertNotice(
        rule="r",
        state="firing",
        severity="critical",
        value=0.2,
        threshold=0.05,
        summary="s",
        started_at="2026-01-01T00:00:00Z",
        fingerprint="abc",
    )
    assert set(orjson.loads(events.dumps(a))) == {
        "rule",
        "state",
        "severity",
        "value",
        "threshold",
        "summary",
        "started_at",
        "fingerprint",
    }
