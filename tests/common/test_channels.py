from __future__ import annotations

import pytest
from bridge_common.channels import Channels, InvalidTopic


def _slot_tag(key: str) -> str:
    return key[key.index("{") + 1 : key.index("}")]


def test_every_name_carries_the_namespace() -> None:
    a, b = Channels("alpha"), Channels("beta")
    names = lambda c: [  # noqa: E731
        c.stream("intents"),
        c.live("intents"),
        c.dedupe("intents"),
        c.topics,
        c.services,
        c.heartbeats,
        c.leader("alerter"),
        c.snapshot_stream,
        c.snapshot_channel,
        c.snapshot_latest,
        c.alert_state,
        c.silences,
        c.etl_group,
        c.etl_dead_letter,
    ]
    for name in names(a):
        assert "alpha" in name
    assert not set(names(a)) & set(names(b))


def test_topic_keys_share_one_hash_tag_and_topics_differ() -> None:
    c = Channels("bridge")
    tags = {
        _slot_tag(c.stream("intents")),
        _slot_tag(c.live("intents")),
        _slot_tag(c.dedupe("intents")),
    }
    assert tags == {"intents"}
    assert _slot_tag(c.stream("audit_logs")) == "audit_logs"


@pytest.mark.parametrize("bad", ["", "has space", "a{b}", "x" * 80, "1abc", "a:b"])
def test_bad_topic_names_rejected(bad: str) -> None:
    with pytest.raises(InvalidTopic):
        Channels("bridge").stream(bad)
