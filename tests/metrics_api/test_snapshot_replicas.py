"""Two metrics API replicas: exactly one publishes snapshots; SIGKILL it and the other takes
over within the lease, with no interleaving and no repeated snapshot."""

from __future__ import annotations

import itertools
import time

import redis
from bridge_common.channels import Channels
from bridge_common.snapshots import CONTRACT_METRICS, snapshot_from_entry

INTERVAL = 0.3
LEASE_TTL = 1.0  # max(3 × interval, 1 s)


def snapshots(r: redis.Redis, ns: str) -> list:
    return [snapshot_from_entry(f) for _, f in r.xrange(Channels(ns).snapshot_stream)]


def wait_for(fn, timeout: float = 15.0):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("not reached in time")


def test_one_publisher_and_failover_after_sigkill(
    spawn, bridge_env, migrated_dsn, redis_url, namespace
) -> None:
    env = {**bridge_env, "BRIDGE_SNAPSHOT_INTERVAL": str(INTERVAL)}
    a = spawn("metrics_api", env)
    b = spawn("metrics_api", env)
    r = redis.Redis.from_url(redis_url)
    wait_for(lambda: len(snapshots(r, namespace)) >= 8)
    before = snapshots(r, namespace)
    leader = before[-1].source
    # while both run, one publishes: every snapshot comes from the same replica
    assert {s.source for s in before} == {leader}
    assert CONTRACT_METRICS <= set(before[-1].metrics)
    victim, survivor = (a, b) if f"-{a.pid}-" in leader else (b, a)
    assert f"-{victim.pid}-" in leader
    victim.kill()
    killed_at = time.time()
    after = wait_for(
        lambda: (
            (s := snapshots(r, namespace))
            and s[-1].source != leader
            and len([x for x in s if x.source != leader]) >= 5
            and s
        )
    )
    assert f"-{survivor.pid}-" in after[-1].source
    # one handover: the victim's run, then the survivor's — never interleaved
    runs = [k for k, _ in itertools.groupby(s.source for s in after)]
    assert runs == [leader, after[-1].source]
    ts = [s.ts for s in after]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)  # nothing repeated or reordered
    last_old = max(s.ts for s in after if s.source == leader)
    first_new = min(s.ts for s in after if s.source != leader)
    assert last_old <= killed_at + 0.05
    # the takeover waits for the lease to lapse and no longer (plus a tick and slack)
    assert first_new - last_old <= LEASE_TTL + 2 * INTERVAL + 1.5
    # the latest key follows the survivor
    latest = r.get(Channels(namespace).snapshot_latest)
    assert latest is not None and snapshot_from_entry({"snapshot": latest}).source != leader
    r.close()
