"""Every Redis key, stream and channel name, and the PostgreSQL NOTIFY channel.

Services talk only through these names. Each name starts with the namespace
(`BRIDGE_NAMESPACE`), so two suites sharing one Redis never see each other. Names carry a
Redis Cluster hash tag: everything about one topic (stream, live channel, dedupe set) sits
in one slot, so the notifier's atomic publish script works on a cluster, while different
topics spread over the shards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: PostgreSQL NOTIFY channel the capture trigger signals (payload-less wake-up).
OUTBOX_NOTIFY_CHANNEL = "bridge_outbox"

#: topic names are table names (or a few built-ins such as `alerts`)
TOPIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,62}")

#: topic the alerter publishes alert state changes on (streamed by the gateway)
ALERTS_TOPIC = "alerts"

#: topics no watched table may publish on (they share streams and dedupe sets with
#: Bridge's own publishers); `bridge.reserved_topics()` in SQL holds the same list
RESERVED_TOPICS = frozenset({ALERTS_TOPIC})


class InvalidTopic(ValueError):
    """A topic name that cannot be a table name."""


def check_topic(topic: str) -> str:
    # fullmatch: `$` would also accept a trailing newline ("intents\n")
    if not isinstance(topic, str) or not TOPIC_RE.fullmatch(topic):
        raise InvalidTopic(f"invalid topic name {topic!r}")
    return topic


@dataclass(frozen=True, slots=True)
class Channels:
    """Names for one namespace. Build once from settings: `Channels(settings.namespace)`."""

    namespace: str

    # -- per topic (hash tag = topic) -------------------------------------------------
    def _topic_key(self, topic: str, suffix: str) -> str:
        return f"{self.namespace}:{{{check_topic(topic)}}}:{suffix}"

    def stream(self, topic: str) -> str:
        """Redis Stream holding the topic's events (history, resume, consumer groups)."""
        return self._topic_key(topic, "stream")

    def live(self, topic: str) -> str:
        """Pub/sub channel (SPUBLISH on a cluster) for live fan-out of the topic's events."""
        return self._topic_key(topic, "live")

    def dedupe(self, topic: str) -> str:
        """Sorted set of recently published sequence numbers, for publishers that let Redis
        assign ids (`EventPublisher`); the notifier's explicit ids need none."""
        return self._topic_key(topic, "dedupe")

    # -- presence (hash tag = topic: one slot per topic, so one script sees it all) ----
    def presence_members(self, topic: str, replica: str) -> str:
        """Hash `conn` → member entry JSON (plus `#seq`) of one gateway replica on a topic;
        its TTL is the replica's lease, renewed with each heartbeat."""
        return self._topic_key(topic, f"presence:m:{replica}")

    def presence_members_prefix(self, topic: str) -> str:
        """`presence_members(topic, r)` is this prefix followed by `r`."""
        return self._topic_key(topic, "presence:m:")

    def presence_index(self, topic: str) -> str:
        """Sorted set replica → lease deadline (Redis clock, ms) of replicas with members."""
        return self._topic_key(topic, "presence")

    def presence_live(self, topic: str) -> str:
        """Pub/sub channel (SPUBLISH on a cluster) of the topic's member changes."""
        return self._topic_key(topic, "presence-live")

    # -- suite-wide registries (hash tag = namespace) ----------------------------------
    def _global(self, suffix: str) -> str:
        return f"{{{self.namespace}}}:{suffix}"

    @property
    def topics(self) -> str:
        """Set of topic names events are published on (written by the notifier)."""
        return self._global("topics")

    @property
    def services(self) -> str:
        """Hash `service/instance` → heartbeat JSON; a stale entry means the instance is down."""
        return self._global("services")

    @property
    def heartbeats(self) -> str:
        """Pub/sub channel every heartbeat is also published on."""
        return self._global("heartbeats")

    def presence_replica(self, replica: str) -> str:
        """Hash of one gateway replica's live figures: `#connections` and, per topic
        `t:<topic>`, its subscriptions (listed or not). TTL = the replica's lease."""
        return self._global(f"presence:replica:{replica}")

    @property
    def presence_replicas(self) -> str:
        """Sorted set replica → lease deadline (Redis clock, ms) of `presence_replica` keys."""
        return self._global("presence:replicas")

    def leader(self, role: str) -> str:
        """Lease key: the holder is the one active instance of `role`."""
        return self._global(f"leader:{role}")

    # -- metrics snapshot (what the alerter evaluates) ---------------------------------
    @property
    def snapshot_stream(self) -> str:
        return self._global("metrics:snapshots")

    @property
    def snapshot_channel(self) -> str:
        return self._global("metrics:snapshot")

    @property
    def snapshot_latest(self) -> str:
        return self._global("metrics:latest")

    # -- alerter ------------------------------------------------------------------------
    @property
    def alert_state(self) -> str:
        """Hash fingerprint → alert state JSON (survives restarts)."""
        return self._global("alerter:state")

    @property
    def silences(self) -> str:
        """Hash silence id → silence JSON."""
        return self._global("alerter:silences")

    @property
    def alert_outbox(self) -> str:
        """Hash `<notification id>:<channel>` → notification not yet delivered (replayed
        by the leader after a restart)."""
        return self._global("alerter:outbox")

    @property
    def alert_epoch(self) -> str:
        """A token the leading alerter writes when it takes over; gone or changed means
        Redis lost its data since (the outbox with it)."""
        return self._global("alerter:epoch")

    @property
    def alert_seq(self) -> str:
        """Counter of notification ids in versions before ids became UUIDv7; no longer
        written (kept: names only grow)."""
        return self._global("alerter:seq")

    # -- ETL ----------------------------------------------------------------------------
    @property
    def etl_group(self) -> str:
        """Consumer group the ETL workers read the `audit_logs` stream with."""
        return f"{self.namespace}-etl"

    @property
    def etl_dead_letter(self) -> str:
        """Stream of rows the ETL could not load, with the reason."""
        return self._global("etl:dead-letter")
