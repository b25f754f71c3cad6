"""The sans-I/O core of snapshots and views: the cut-over test, leave frames, the live
message split, and the snapshot settings' bounds."""

from __future__ import annotations

import json

import pytest
from bridge_common.events import assemble_event, event_fragment
from bridge_common.settings import load_settings
from bridge_gateway.filters import RowFilter
from bridge_gateway.settings import Settings
from bridge_gateway.views import Cutover, decode_meta, frame_for, split_live


def test_cutover_follows_pg_visible_in_snapshot() -> None:
    cut = Cutover("100:110:103,107")
    # committed before the snapshot: shown, so not delivered after it
    assert cut.visible(99) and cut.visible(100) and cut.visible(105)
    # in progress when it was taken, or started after: delivered
    assert not cut.visible(103) and not cut.visible(107) and not cut.visible(110)
    assert cut.after(103) and cut.after(200) and not cut.after(105)
    # no transaction id (an older relay): delivered, never lost
    assert cut.after(None)
    assert Cutover("5:5:").xip == frozenset()


def _event(op: str, row: dict[str, object]) -> bytes:
    return assemble_event("t", "9-1", event_fragment(op, str(row["id"]), row, "ts"))


def test_frames_for_a_filtered_subscriber() -> None:
    failed = RowFilter({"status": "failed"})
    moved_out = _event("update", {"id": 1, "status": "corrected"})
    meta = decode_meta(b'{"x":7,"o":{"status":"failed"}}')
    leave = frame_for(failed, "t", b"9-1", moved_out, meta)
    assert leave is not None
    assert json.loads(leave) == {
        "type": "event",
        "topic": "t",
        "id": "9-1",
        "op": "leave",
        "key": "1",
        "ts": "ts",
    }
    # the old row did not match either: nothing; no filter: the event itself
    other = decode_meta(b'{"x":7,"o":{"status":"pending"}}')
    assert frame_for(failed, "t", b"9-1", moved_out, other) is None
    assert frame_for(None, "t", b"9-1", moved_out, meta) == moved_out
    # an update that changed nothing the filter reads keeps matching or not matching
    still = _event("update", {"id": 1, "status": "failed"})
    assert frame_for(failed, "t", b"9-1", still, decode_meta(b'{"x":7,"o":{"n":1}}')) == still
    # a row that comes into the filter is its update
    assert frame_for(failed, "t", b"9-1", still, meta) == still
    # inserts and deletes never become leave frames
    assert frame_for(failed, "t", b"9-1", _event("delete", {"id": 1, "status": "x"}), meta) is None


def test_live_messages_carry_the_meta_after_a_newline() -> None:
    raw = _event("insert", {"id": 1, "note": "a\nb"})  # escaped in the JSON
    assert b"\n" not in raw
    assert split_live(raw + b'\n{"x":5}') == (raw, b'{"x":5}')
    assert split_live(raw) == (raw, b"")
    assert decode_meta(b"junk") == decode_meta(b"")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("BRIDGE_SNAPSHOT_MAX_ROWS", "0"),
        ("BRIDGE_GATEWAY_SNAPSHOT_CONCURRENCY", "0"),
        ("BRIDGE_GATEWAY_SNAPSHOT_TIMEOUT", "-1"),
        ("BRIDGE_SNAPSHOT_DSN", "mysql://x"),
    ],
)
def test_bad_snapshot_settings_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str
) -> None:
    monkeypatch.setenv("BRIDGE_AUTH", "disabled")
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exc:
        load_settings(Settings)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and var in err
