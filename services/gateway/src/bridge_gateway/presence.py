"""Presence state of one topic on one gateway replica, sans I/O: who is subscribed here and
on every other replica, what this replica still has to write to Redis, and the batched
`presence` frames its watchers get.

A :class:`TopicView` is fed events — local joins and leaves, other replicas' changes as
read from Redis, a clock for their leases — and answers with the next frame (at most one
per :data:`BATCH_INTERVAL`, built by :mod:`presence_redis`) and the next write. The list
a frame carries is capped (`cap`): past it the counts stay exact, the list keeps the
members it already shows, fills freed places with members not yet shown and says
`"truncated": true`. Every watcher of a topic on a replica sees the same frames, so a
frame is encoded once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from bridge_common.events import PresenceEntry, dumps

#: at most one presence frame per topic per this many seconds
BATCH_INTERVAL = 0.1

_entry_decoder = msgspec.json.Decoder(PresenceEntry)


@dataclass(frozen=True, slots=True)
class Member:
    """One visible connection on a topic; `entry` is its wire form, encoded once."""

    conn: str
    sub: str
    entry: bytes


def make_member(conn: str, sub: str, info: bytes | None) -> Member:
    """`info` is the already-encoded JSON of the token's `info` claim (None: null)."""
    entry = (
        b'{"sub":' + dumps(sub) + b',"conn":' + dumps(conn) + b',"info":' + (info or b"null") + b"}"
    )
    return Member(conn, sub, entry)


def member_from_entry(entry: bytes) -> Member | None:
    """A member read back from Redis; None when the entry does not parse."""
    try:
        e = _entry_decoder.decode(entry)
    except msgspec.MsgspecError:
        return None
    return Member(e.conn, e.sub, entry)


@dataclass(frozen=True, slots=True)
class Identity:
    """What a token says about its holder's presence: listed or not, and its `info`."""

    visible: bool = True
    #: the encoded `info` claim; None when absent, null or larger than the cap
    info: bytes | None = None
    #: the claim was there but larger than the cap (it is listed as null)
    info_dropped: bool = False


def identity_from_claims(claims: Mapping[str, Any], max_info_bytes: int) -> Identity:
    """`"presence": false` hides a client; `info` (any JSON) is passed through up to
    `max_info_bytes` of encoded JSON — a larger one is listed as null, never refused."""
    visible = claims.get("presence") is not False
    raw = claims.get("info")
    if raw is None:
        return Identity(visible)
    try:
        info = dumps(raw)
    except (TypeError, msgspec.EncodeError):
        return Identity(visible, None, True)
    if len(info) > max_info_bytes:
        return Identity(visible, None, True)
    return Identity(visible, info)


@dataclass(slots=True)
class _Replica:
    """Another replica's members on this topic as last read, with its lease."""

    epoch: str
    seq: int
    deadline: float
    conns: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Frame:
    """What watchers are told: the listed entries that joined and left, and the counts."""

    joins: list[bytes]
    leaves: list[bytes]
    connections: int
    subs: int
    truncated: bool
    full: bool = False


@dataclass(frozen=True, slots=True)
class Writes:
    """What this replica has to write to Redis for the topic (`full`: replace the lot)."""

    joins: list[Member]
    leaves: list[str]
    full: bool


class TopicView:
    """Presence of one topic as this replica knows it (see the module docstring)."""

    def __init__(self, topic: str, replica: str, cap: int) -> None:
        self.topic = topic
        self.replica = replica
        self.cap = cap
        #: every visible member, this replica's and the others'
        self.members: dict[str, Member] = {}
        self._subs: Counter[str] = Counter()
        #: this replica's visible members, and how many hidden subscriptions it has
        self.local: dict[str, Member] = {}
        self.hidden = 0
        self.replicas: dict[str, _Replica] = {}
        #: what watchers have been shown (at most `cap` entries)
        self.listed: dict[str, Member] = {}
        self._changed: set[str] = set()
        #: (connections, subs, truncated) of the last frame
        self._told = (0, 0, False)
        # pending writes to Redis
        self._out_joins: dict[str, Member] = {}
        self._out_leaves: set[str] = set()
        #: Redis holds no (or a stale) copy of this replica's members: write them all
        self.rewrite = True
        #: this replica's members are in Redis (a hash exists to renew or drop)
        self.written = False
        #: the other replicas' members have been read at least once
        self.synced = False

    # -- counts ---------------------------------------------------------------------------
    @property
    def connections(self) -> int:
        return len(self.members)

    @property
    def subs(self) -> int:
        return len(self._subs)

    @property
    def local_subscriptions(self) -> int:
        """This replica's subscriptions to the topic, listed or hidden."""
        return len(self.local) + self.hidden

    @property
    def idle(self) -> bool:
        """Nothing local left to keep or to write."""
        return not self.local and not self.hidden and not self.written and not self.pending

    @property
    def pending(self) -> bool:
        return bool(self._changed or self._out_joins or self._out_leaves) or (
            self.rewrite and bool(self.local)
        )

    # -- membership -----------------------------------------------------------------------
    def _add(self, m: Member) -> None:
        if m.conn in self.members:
            return
        self.members[m.conn] = m
        self._subs[m.sub] += 1
        self._changed.add(m.conn)

    def _remove(self, conn: str) -> None:
        m = self.members.pop(conn, None)
        if m is None:
            return
        n = self._subs[m.sub] - 1
        if n > 0:
            self._subs[m.sub] = n
        else:
            del self._subs[m.sub]
        self._changed.add(conn)

    def local_join(self, m: Member) -> None:
        self.local[m.conn] = m
        self._add(m)
        self._out_leaves.discard(m.conn)
        self._out_joins[m.conn] = m

    def local_leave(self, conn: str) -> None:
        if self.local.pop(conn, None) is None:
            return
        self._remove(conn)
        if self._out_joins.pop(conn, None) is None:
            self._out_leaves.add(conn)

    def remote_full(
        self,
        replica: str,
        epoch: str,
        seq: int,
        deadline: float,
        members: list[Member],
        *,
        published: bool = False,
    ) -> None:
        """Replace what is known of `replica`: its whole list, published (in order with
        its changes) or read (then possibly older than a change already applied)."""
        if replica == self.replica:
            return
        r = self.replicas.get(replica)
        if r is None:
            r = self.replicas[replica] = _Replica(epoch, seq, deadline)
        elif not published and r.epoch == epoch and seq < r.seq:
            r.deadline = max(r.deadline, deadline)
            return
        r.epoch = epoch
        now = {m.conn: m for m in members}
        for conn in r.conns - now.keys():
            self._remove(conn)
        for m in now.values():
            if m.conn not in r.conns:
                self._add(m)
        r.conns = set(now)
        r.seq = seq
        r.deadline = deadline

    def remote_diff(
        self,
        replica: str,
        epoch: str,
        seq: int,
        deadline: float,
        joins: list[Member],
        leaves: list[str],
    ) -> bool:
        """Apply one published change of `replica`; False when one was missed (the
        caller then reads that replica's whole list)."""
        if replica == self.replica:
            return True
        r = self.replicas.get(replica)
        if r is None or r.epoch != epoch:
            return False
        if seq <= r.seq:
            return True  # already known (read after it was published)
        if seq != r.seq + 1:
            return False
        for m in joins:
            if m.conn not in r.conns:
                r.conns.add(m.conn)
                self._add(m)
        for conn in leaves:
            if conn in r.conns:
                r.conns.discard(conn)
                self._remove(conn)
        r.seq = seq
        r.deadline = max(r.deadline, deadline)
        return True

    def remote_seen(self, replica: str, epoch: str, seq: int, deadline: float) -> bool:
        """A periodic read saw `replica` at `seq`; False when its list must be read."""
        r = self.replicas.get(replica)
        if r is None or r.epoch != epoch or r.seq < seq:
            return False
        r.deadline = max(r.deadline, deadline)
        return True

    def remote_gone(self, replica: str) -> None:
        r = self.replicas.pop(replica, None)
        if r is None:
            return
        for conn in r.conns:
            self._remove(conn)

    def expire(self, now: float) -> list[str]:
        """Drop replicas whose lease ran out (killed, or cut off from Redis)."""
        gone = [name for name, r in self.replicas.items() if r.deadline < now]
        for name in gone:
            self.remote_gone(name)
        return gone

    def remote_known(self) -> Iterable[tuple[str, str]]:
        """(replica, "<epoch>:<seq>") of every replica known."""
        return ((name, f"{r.epoch}:{r.seq}") for name, r in self.replicas.items())

    # -- output ---------------------------------------------------------------------------
    def take_writes(self) -> Writes | None:
        """The next write to Redis, or None when Redis is up to date."""
        if self.rewrite and self.local:
            self.rewrite = False
            self._out_joins.clear()
            self._out_leaves.clear()
            return Writes(list(self.local.values()), [], True)
        if not self._out_joins and not self._out_leaves:
            return None
        w = Writes(list(self._out_joins.values()), list(self._out_leaves), False)
        self._out_joins.clear()
        self._out_leaves.clear()
        return w

    def write_failed(self, w: Writes) -> None:
        """Redis did not take `w`: write the whole list again once it answers."""
        self.rewrite = True

    def take_frame(self) -> Frame | None:
        """The change of the listed members since the last frame, or None if none."""
        if not self._changed:
            return None
        changed, self._changed = self._changed, set()
        leaves: list[bytes] = []
        for conn in changed:
            if conn in self.listed and conn not in self.members:
                leaves.append(self.listed.pop(conn).entry)
        joins: list[bytes] = []
        free = self.cap - len(self.listed)
        if free > 0:
            for conn in changed:
                if free <= 0:
                    break
                m = self.members.get(conn)
                if m is not None and conn not in self.listed:
                    self.listed[conn] = m
                    joins.append(m.entry)
                    free -= 1
            if free > 0 and len(self.listed) < len(self.members):
                # places freed while the list was full: show members not shown yet
                for conn, m in self.members.items():
                    if free <= 0:
                        break
                    if conn not in self.listed:
                        self.listed[conn] = m
                        joins.append(m.entry)
                        free -= 1
        told = (self.connections, self.subs, self.truncated)
        if not joins and not leaves and told == self._told:
            return None
        # past the cap an unlisted member's join or leave changes only the counts
        self._told = told
        return Frame(joins, leaves, *told)

    @property
    def truncated(self) -> bool:
        return len(self.listed) < len(self.members)

    def full_frame(self) -> Frame:
        """Everything listed: the first frame of a new watcher."""
        return Frame(
            [m.entry for m in self.listed.values()],
            [],
            self.connections,
            self.subs,
            self.truncated,
            full=True,
        )


def encode_frame(topic: str, frame: Frame) -> bytes:
    """`{"type":"presence",...}` from entries already in wire form (no re-encoding)."""
    return (
        b'{"type":"presence","topic":'
        + dumps(topic)
        + b',"joins":['
        + b",".join(frame.joins)
        + b'],"leaves":['
        + b",".join(frame.leaves)
        + b'],"full":'
        + (b"true" if frame.full else b"false")
        + b',"connections":'
        + str(frame.connections).encode()
        + b',"subs":'
        + str(frame.subs).encode()
        + b',"truncated":'
        + (b"true" if frame.truncated else b"false")
        + b"}"
    )


def listing(members: Iterable[Member], cap: int) -> tuple[list[bytes], int, int, bool]:
    """Entries (at most `cap`), connections, distinct subs, truncated — for one read."""
    entries: list[bytes] = []
    subs: set[str] = set()
    n = 0
    for m in members:
        n += 1
        subs.add(m.sub)
        if len(entries) < cap:
            entries.append(m.entry)
    return entries, n, len(subs), n > len(entries)
