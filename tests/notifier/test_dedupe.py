"""The publish script's dedupe window is ordered by publish time, not by outbox seq: a
transaction that commits late has a low seq, and must still be remembered afterwards."""

from __future__ import annotations

import asyncio

from bridge_common.channels import Channels
from bridge_common.events import event_fragment
from bridge_common.redis import EventPublisher


async def test_a_late_low_seq_survives_the_dedupe_trim(aredis_client, namespace: str) -> None:
    ch = Channels(namespace)
    pub = EventPublisher(aredis_client, ch, dedupe_keep=3)

    def frag(seq: int) -> tuple[int, bytes]:
        return seq, event_fragment("insert", str(seq), {"seq": seq}, "ts")

    assert all(await pub.publish("late", [frag(10), frag(11), frag(12)]))
    await asyncio.sleep(0.01)
    [late_id] = await pub.publish("late", [frag(5)])  # committed late: lower seq, newer
    assert late_id is not None
    assert await aredis_client.zcard(ch.dedupe("late")) == 3
    assert await aredis_client.zscore(ch.dedupe("late"), "5") is not None
    assert await pub.publish("late", [frag(5)]) == [None]  # its replay is dropped
    assert await aredis_client.xlen(ch.stream("late")) == 4
