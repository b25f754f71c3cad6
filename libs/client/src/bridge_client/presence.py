"""Who else is subscribed to a topic: the list a subscription's presence frames describe.

``sub = client.subscribe("intents", presence=True)``; then ``sub.presence.members`` is
the current list (connection id → `PresenceEntry`), ``sub.presence.connections`` /
``subs`` the exact counts (also past the gateway's list cap, when ``truncated``), and
``async for change in sub.presence`` yields each change as it arrives. After a reconnect
the gateway's first frame is the whole list again and replaces what was known.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from bridge_common.events import Presence, PresenceEntry

#: changes kept for `async for` when the caller is slower than the frames (the list
#: itself is always current; only the oldest change notices are dropped)
MAX_PENDING_CHANGES = 1_000


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """One presence frame as applied: who joined and left, and the counts after it."""

    joins: list[PresenceEntry]
    leaves: list[PresenceEntry]
    #: the frame listed everyone (first frame, or after a reconnect)
    full: bool
    connections: int
    subs: int
    truncated: bool


class PresenceList:
    """The members of one topic as the gateway reports them (see the module docstring)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.members: dict[str, PresenceEntry] = {}
        self.connections = 0
        self.subs = 0
        self.truncated = False
        #: True once the whole list arrived on the current connection
        self.ready = False
        self._changes: deque[PresenceChange] = deque(maxlen=MAX_PENDING_CHANGES)
        self._signal = asyncio.Event()
        self._closed = False

    def apply(self, frame: Presence) -> PresenceChange:
        """Apply one frame from the gateway."""
        if frame.full:
            self.members = {}
        for e in frame.leaves:
            self.members.pop(e.conn, None)
        for e in frame.joins:
            self.members[e.conn] = e
        self.connections = frame.connections
        self.subs = frame.subs
        self.truncated = frame.truncated
        self.ready = True
        change = PresenceChange(
            list(frame.joins),
            list(frame.leaves),
            frame.full,
            frame.connections,
            frame.subs,
            frame.truncated,
        )
        self._changes.append(change)
        self._wake()
        return change

    def stale(self) -> None:
        """The connection dropped: the list is the last one known until the next frame."""
        self.ready = False

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    @property
    def subs_present(self) -> set[str]:
        """The distinct `sub`s listed."""
        return {e.sub for e in self.members.values()}

    async def wait_ready(self) -> None:
        """Wait for the whole list (bound it with ``asyncio.timeout``)."""
        while not self.ready and not self._closed:
            await self._signal.wait()

    def __aiter__(self) -> PresenceList:
        return self

    async def __anext__(self) -> PresenceChange:
        while not self._changes:
            if self._closed:
                raise StopAsyncIteration
            await self._signal.wait()
        return self._changes.popleft()


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """One `GET /presence/{topic}` answer (works whatever the transport)."""

    topic: str
    present: list[PresenceEntry]
    connections: int
    subs: int
    truncated: bool
