"""The presence state machine in-process: local and remote joins/leaves, missed changes,
epochs, lease expiry, the list cap, token claims and the frame encoding."""

from __future__ import annotations

import json

import pytest
from bridge_gateway.presence import (
    TopicView,
    encode_frame,
    identity_from_claims,
    listing,
    make_member,
    member_from_entry,
)
from bridge_gateway.presence_redis import _topic_of


def m(conn: str, sub: str | None = None, info: bytes | None = None):  # type: ignore[no-untyped-def]
    return make_member(conn, sub or f"sub-{conn}", info)


def frame_json(view: TopicView) -> dict | None:  # type: ignore[type-arg]
    f = view.take_frame()
    return None if f is None else json.loads(encode_frame(view.topic, f))


def subs(entries: list[dict]) -> list[str]:  # type: ignore[type-arg]
    return sorted(e["sub"] for e in entries)


def test_local_joins_and_leaves_are_batched_into_one_frame_and_one_write() -> None:
    v = TopicView("t", "me", cap=100)
    v.local_join(m("c1"))
    v.local_join(m("c2"))
    v.local_join(m("c3"))
    v.local_leave("c3")  # joined and left within one batch: no trace
    f = frame_json(v)
    assert f is not None
    assert f["type"] == "presence" and f["topic"] == "t" and f["full"] is False
    assert subs(f["joins"]) == ["sub-c1", "sub-c2"] and f["leaves"] == []
    assert (f["connections"], f["subs"], f["truncated"]) == (2, 2, False)
    assert frame_json(v) is None  # nothing new
    w = v.take_writes()
    assert w is not None and w.full  # first write replaces whatever Redis had
    assert sorted(x.conn for x in w.joins) == ["c1", "c2"]
    v.local_leave("c1")
    v.local_join(m("c4"))
    w = v.take_writes()
    assert w is not None and not w.full
    assert [x.conn for x in w.joins] == ["c4"] and w.leaves == ["c1"]
    f = frame_json(v)
    assert f is not None
    assert subs(f["joins"]) == ["sub-c4"] and subs(f["leaves"]) == ["sub-c1"]


def test_distinct_subs_are_counted_once() -> None:
    v = TopicView("t", "me", cap=100)
    v.local_join(m("c1", "ada"))
    v.local_join(m("c2", "ada"))
    v.remote_full("other", "e1", 1, 100.0, [m("r1", "ada"), m("r2", "bob")])
    assert (v.connections, v.subs) == (4, 2)
    v.local_leave("c1")
    v.local_leave("c2")
    v.remote_gone("other")
    assert (v.connections, v.subs) == (0, 0)


def test_remote_changes_apply_in_sequence_and_a_gap_asks_for_a_read() -> None:
    v = TopicView("t", "me", cap=100)
    v.remote_full("b", "e1", 3, 10.0, [m("b1")])
    assert v.remote_diff("b", "e1", 4, 11.0, [m("b2")], [])
    assert v.remote_diff("b", "e1", 4, 11.0, [m("b2")], [])  # duplicate: ignored
    assert not v.remote_diff("b", "e1", 6, 12.0, [m("b9")], [])  # 5 was missed
    assert "b9" not in v.members
    assert not v.remote_diff("b", "e2", 5, 12.0, [], [])  # new epoch (Redis lost it)
    assert not v.remote_diff("c", "e1", 1, 12.0, [], [])  # never read
    assert v.remote_diff("b", "e1", 5, 12.0, [], ["b1"])
    assert sorted(v.members) == ["b2"]
    # our own replica's changes come from memory, never back from Redis
    assert v.remote_diff("me", "x", 99, 1.0, [m("ghost")], [])
    v.remote_full("me", "x", 1, 1.0, [m("ghost")])
    assert "ghost" not in v.members


def test_a_read_older_than_applied_changes_does_not_undo_them() -> None:
    v = TopicView("t", "me", cap=100)
    v.remote_full("b", "e1", 1, 10.0, [m("b1")])
    assert v.remote_diff("b", "e1", 2, 10.0, [m("b2")], [])
    v.remote_full("b", "e1", 1, 11.0, [m("b1")])  # a read that ran before change 2
    assert sorted(v.members) == ["b1", "b2"]
    assert v.remote_seen("b", "e1", 2, 12.0) and not v.remote_seen("b", "e1", 3, 12.0)
    # a published whole list (new epoch after a rebuild) always replaces
    v.remote_full("b", "e2", 1, 13.0, [m("b3")], published=True)
    assert sorted(v.members) == ["b3"]
    assert dict(v.remote_known()) == {"b": "e2:1"}


def test_lease_expiry_drops_a_silent_replica() -> None:
    v = TopicView("t", "me", cap=100)
    v.local_join(m("mine"))
    v.remote_full("b", "e", 1, 10.0, [m("b1"), m("b2")])
    v.remote_full("c", "e", 1, 20.0, [m("c1")])
    frame_json(v)
    assert v.expire(9.0) == []
    v.remote_seen("c", "e", 1, 30.0)  # c renewed, b did not
    assert v.expire(25.0) == ["b"]
    f = frame_json(v)
    assert f is not None and subs(f["leaves"]) == ["sub-b1", "sub-b2"] and f["joins"] == []
    assert sorted(v.members) == ["c1", "mine"]


def test_cap_lists_some_counts_all_and_refills_freed_places() -> None:
    v = TopicView("t", "me", cap=2)
    for i in range(4):
        v.local_join(m(f"c{i}"))
    f = frame_json(v)
    assert f is not None and len(f["joins"]) == 2
    assert (f["connections"], f["truncated"]) == (4, True)
    shown = [e["conn"] for e in f["joins"]]
    full = json.loads(encode_frame("t", v.full_frame()))
    assert full["full"] is True and [e["conn"] for e in full["joins"]] == shown
    v.local_leave(shown[0])
    f = frame_json(v)
    assert f is not None
    assert [e["conn"] for e in f["leaves"]] == [shown[0]]
    assert len(f["joins"]) == 1 and f["joins"][0]["conn"] not in shown
    assert (f["connections"], f["truncated"]) == (3, True)
    # an unlisted member leaving changes only the counts: a frame says so
    hidden_one = next(c for c in v.members if c not in v.listed)
    v.local_leave(hidden_one)
    f = frame_json(v)
    assert f is not None and f["joins"] == [] and f["leaves"] == []
    assert (f["connections"], f["truncated"]) == (2, False)


def test_write_failure_and_lost_hash_rewrite_everything() -> None:
    v = TopicView("t", "me", cap=10)
    v.local_join(m("a"))
    w = v.take_writes()
    assert w is not None and w.full
    v.local_join(m("b"))
    w2 = v.take_writes()
    assert w2 is not None and not w2.full
    v.write_failed(w2)
    w3 = v.take_writes()
    assert w3 is not None and w3.full and sorted(x.conn for x in w3.joins) == ["a", "b"]


def test_identity_claims() -> None:
    assert identity_from_claims({}, 100).visible is True
    assert identity_from_claims({"presence": False}, 100).visible is False
    assert identity_from_claims({"presence": "false"}, 100).visible is True  # only false
    ident = identity_from_claims({"info": {"name": "Ada"}}, 100)
    assert ident.info == b'{"name":"Ada"}' and not ident.info_dropped
    big = identity_from_claims({"info": "x" * 200}, 100)
    assert big.info is None and big.info_dropped and big.visible


def test_entries_round_trip_and_escape() -> None:
    member = make_member("c1", 'quote " and \u00e9', b'{"k":[1,2]}')
    entry = json.loads(member.entry)
    assert entry == {"sub": 'quote " and \u00e9', "conn": "c1", "info": {"k": [1, 2]}}
    back = member_from_entry(member.entry)
    assert back == member
    assert member_from_entry(b"not json") is None
    entries, n, nsubs, truncated = listing([m("1", "x"), m("2", "x"), m("3", "y")], 2)
    assert (len(entries), n, nsubs, truncated) == (2, 3, 2, True)


def test_channel_names_map_back_to_topics() -> None:
    from bridge_common.channels import Channels

    ch = Channels("ns")
    assert _topic_of(ch.presence_live("audit_logs")) == "audit_logs"
    assert _topic_of(ch.live("audit_logs")) is None
    assert ch.presence_members("t", "r1").startswith(ch.presence_members_prefix("t"))
    # one hash tag per topic (the scripts touch one cluster slot), the namespace's for the
    # per-replica summaries
    for name in (ch.presence_members("t", "r1"), ch.presence_index("t"), ch.presence_live("t")):
        assert "{t}" in name and name.startswith("ns:")
    assert ch.presence_replica("r1").startswith("{ns}:") and ch.presence_replicas == (
        "{ns}:presence:replicas"
    )


def test_presence_settings_are_bounded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge_common.settings import load_settings
    from bridge_gateway.settings import Settings

    monkeypatch.setenv("BRIDGE_AUTH", "disabled")
    assert load_settings(Settings).presence_max_list == 1000
    assert load_settings(Settings).presence_max_info_bytes == 1024
    for name, bad in (("BRIDGE_PRESENCE_MAX_LIST", "0"), ("BRIDGE_PRESENCE_MAX_INFO_BYTES", "-1")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SystemExit) as exited:
            load_settings(Settings)
        assert exited.value.code == 2
        assert name in capsys.readouterr().err
        monkeypatch.delenv(name)
