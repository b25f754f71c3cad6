"""Evaluation: every metrics snapshot, through every rule, by the one leader.

The leader reads `Channels.snapshot_stream` (not the pub/sub channel, so no snapshot is
missed while it is busy), steps each rule's state machine with the snapshot's time, and
commits each change with its notifications in one fenced write. A metric that is missing
from a snapshot or `null` is "no data": the rule's `no_data` setting decides (`keep`, the
default, leaves the alert as it is; `ok` treats it as not holding; `alerting` as holding).
When no fresh snapshot arrives at all (the metrics API is down, or cannot publish), the
leader evaluates an empty one once per snapshot interval: every metric is "no data", so
rules with `no_data: alerting` fire on the silence itself instead of waiting for figures.

Redis data loss (restart without persistence, FLUSHALL, failover) takes the stored alert
state with it. The evaluator rebuilds it without a storm of notifications:

* a leader that kept running still holds every alert's state in memory. Before each
  evaluation it compares the stored fingerprints with its own and writes back what Redis
  forgot (`alerter.state_restored`) — nothing is notified again, `started_at` is kept.
  When the epoch token (`Channels.alert_epoch`) is gone, it also writes back the
  notifications it still owes (`alerter.outbox_restored`; its channel workers send them
  meanwhile anyway, see delivery.py). Likewise the silences it read last time that are
  still running but gone from Redis are written back (`alerter.silences_restored`);
* a leader that starts (or takes over) with no stored state at all cannot tell a first
  start from a loss. Alerts start from `inactive`; one whose condition already holds at the
  first evaluation fires again after its `for`, with a new `started_at`, notified once per
  channel, and its summary says it was re-found (`REFOUND_NOTE`, log `alert.refound`,
  `bridge_alerter_refound_total`): it may repeat a notice sent before the loss.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec
from bridge_common import tracing
from bridge_common.channels import Channels
from bridge_common.events import MetricsSnapshot
from bridge_common.logging import get_logger
from bridge_common.redis import AnyRedis
from bridge_common.snapshots import snapshot_from_entry
from redis.exceptions import RedisError

from . import metrics
from .delivery import Dispatcher
from .leader import Leadership
from .rules import RuleSet
from .settings import Settings
from .silences import Silence, SilenceStore
from .state import AlertState, Step, step
from .store import EVENTS_CHANNEL, AlertStore, Delivery, new_delivery_id

log = get_logger("alerter.evaluator")

#: snapshots read per XREAD call
READ_BATCH = 100
#: appended to the summary of an alert found firing right after a start with no stored state
REFOUND_NOTE = (
    " [re-found: the alerter had no stored state (first start or Redis data loss);"
    " this may repeat an earlier notice]"
)


class NotLeader(Exception):
    """The lease was lost between deciding and committing; the write did not happen."""


class Evaluator:
    def __init__(
        self,
        settings: Settings,
        client: AnyRedis,
        channels: Channels,
        store: AlertStore,
        silences: SilenceStore,
        leadership: Leadership,
        dispatcher: Dispatcher,
        rules: Callable[[], RuleSet],
    ) -> None:
        self.settings = settings
        self.client = client
        self.channels = channels
        self.store = store
        self.silences = silences
        self.leadership = leadership
        self.dispatcher = dispatcher
        self.rules = rules
        self.states: dict[str, AlertState] = {}
        self._term = -1
        self._ruleset: RuleSet | None = None
        self._last_id: bytes | str = b"0-0"
        self._last_ts = 0.0
        #: time of the newest real snapshot seen (the empty ones evaluated for silence
        #: move `_last_ts`, not this)
        self._last_real_ts = 0.0
        self._last_silence = 0.0
        #: the first snapshot time after a take-over that found no stored state: alerts
        #: whose condition held from then on were probably firing before (re-found)
        self._rebuild_ts: float | None = None
        self._rebuilding = False
        #: silences still running at the last evaluation (restored if Redis loses them)
        self._silences_seen: dict[str, Silence] = {}
        #: snapshots older than this (seconds) are not evaluated
        self.stale_after = max(3 * settings.snapshot_interval, 30.0)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.leadership.is_leader:
                await _wait(self.leadership.active, stop)
                continue
            try:
                if self._term != self.leadership.term:
                    await self._take_over()
                await self._read_once()
            except NotLeader:
                log.warning("evaluator.lost_lease")
            except (RedisError, OSError) as exc:
                log.warning("evaluator.redis_error", error=str(exc))
                await _sleep(stop, 1.0)

    async def _take_over(self) -> None:
        """Become the evaluator: load the shared state, start at the newest snapshot."""
        stored = await self.store.load_states()
        if self.store.epoch is not None and not await self.store.epoch_intact():
            # this process led before and Redis lost its data since
            owed = await self.dispatcher.restore_owed()
            log.warning("alerter.outbox_restored", notifications=owed)
        else:
            self.dispatcher.forget_abandoned()
        await self.store.claim_epoch()
        if stored or not self.states:
            self.states = stored
        # else: this process led before and Redis forgot everything; keep what it knows
        # (written back by `_restore_lost_states`)
        self._rebuilding = not self.states
        self._rebuild_ts = None
        self._term = self.leadership.term
        self._ruleset = None
        self._last_ts = 0.0
        self._last_real_ts = 0.0
        newest: Any = await self.client.xrevrange(self.channels.snapshot_stream, count=1)
        self._last_id = newest[0][0] if newest else b"0-0"
        log.info("evaluator.took_over", alerts=len(self.states), term=self._term)
        await self._reconcile()
        if newest:
            await self.evaluate_entry(newest[0][1])
        self._update_gauges()

    async def _read_once(self) -> None:
        resp: Any = await self.client.xread(
            {self.channels.snapshot_stream: self._last_id}, count=READ_BATCH, block=1000
        )
        for _stream, entries in resp or []:
            for entry_id, fields in entries:
                self._last_id = entry_id
                await self.evaluate_entry(fields)
        await self._evaluate_silence()
        self._update_gauges()

    async def _evaluate_silence(self) -> None:
        """No fresh snapshot for `stale_after`: evaluate an empty one (module docstring)."""
        now = time.time()
        if now - self._last_real_ts <= self.stale_after:
            return
        if now - self._last_silence < self.settings.snapshot_interval:
            return
        self._last_silence = now
        log.warning("snapshot.none_fresh", last_ts=self._last_ts or None)
        await self.evaluate(MetricsSnapshot(ts=now, metrics={}, source="no fresh snapshot"))

    async def evaluate_entry(self, fields: dict[Any, Any]) -> None:
        try:
            snapshot = snapshot_from_entry(fields)
        except Exception as exc:  # noqa: BLE001 - a bad entry is skipped, never fatal
            log.warning("snapshot.invalid", error=str(exc))
            return
        self._last_real_ts = max(self._last_real_ts, snapshot.ts)
        await self.evaluate(snapshot)

    async def evaluate(self, snapshot: MetricsSnapshot) -> None:
        if snapshot.ts <= self._last_ts:
            return  # an old or replayed snapshot: its effects are already in the state
        age = time.time() - snapshot.ts
        if age > self.stale_after:
            # e.g. the newest snapshot after a long metrics-API outage: figures that old
            # must not fire or resolve anything
            log.warning("snapshot.stale", age=round(age, 1), limit=self.stale_after)
            return
        self._last_ts = snapshot.ts
        if self._rebuilding and self._rebuild_ts is None:
            self._rebuild_ts = snapshot.ts
        await self._restore_lost_states()
        metrics.EVALUATIONS.inc()
        metrics.SNAPSHOT_AGE.set(max(0.0, time.time() - snapshot.ts))
        if self.rules() is not self._ruleset:
            await self._reconcile()  # a reload: forget removed rules before using new ones
        ruleset = self._ruleset
        assert ruleset is not None
        with tracing.span(
            "bridge.alerter", "alerter.evaluate", {"bridge.rules": len(ruleset.rules)}
        ) as span:
            silenced = await self._active_silences()
            now = snapshot.ts
            changed = 0
            for rule in ruleset.rules:
                fp = rule.fingerprint
                current = self.states.get(fp) or AlertState.new(rule)
                silence = silenced.get(rule.name)
                result = step(
                    rule,
                    current,
                    snapshot.metrics.get(rule.metric),
                    now,
                    grace=self.settings.resolve_grace,
                    silenced_by=silence.id if silence else None,
                )
                if result.changed:
                    changed += 1
                    await self._commit(result, rule.notify, now)
            if span is not None:
                span.set_attribute("bridge.changed", changed)

    async def _restore_lost_states(self) -> None:
        """Write back the states Redis forgot while this leader kept them (see docstring)."""
        if not await self.store.epoch_intact():
            # Redis lost its data: the outbox first (what this leader still owes), then
            # mark the new data as seen
            owed = await self.dispatcher.restore_owed()
            await self.store.claim_epoch()
            log.warning("alerter.outbox_restored", notifications=owed)
        if not self.states:
            return
        stored = await self.store.stored_fingerprints()
        lost = [st for fp, st in self.states.items() if fp not in stored]
        if not lost:
            return
        for st in lost:
            if not await self.store.commit(st.fingerprint, st, []):
                raise NotLeader
        metrics.STATES_RESTORED.inc(len(lost))
        log.warning(
            "alerter.state_restored",
            alerts=len(lost),
            firing=sum(1 for st in lost if st.state == "firing"),
        )

    async def _active_silences(self) -> dict[str, Silence]:
        """Rule → active silence; silences Redis lost since the last read are written back
        while they still run (only silences expire; nothing else deletes a running one)."""
        now = time.time()
        found = await self.silences.all()
        ids = {x.id for x in found}
        lost = [x for x in self._silences_seen.values() if x.id not in ids and x.ends_at > now]
        if lost:
            await self.silences.restore(lost)
            found += lost
            metrics.SILENCES_RESTORED.inc(len(lost))
            log.warning("alerter.silences_restored", silences=len(lost))
        self._silences_seen = {x.id: x for x in found if x.ends_at > now}
        return {x.rule: x for x in found if x.active(now)}

    def _refound(self, s: AlertState, kind: str | None) -> bool:
        """A first firing notice of an alert that held since the rebuild began."""
        return (
            kind == "firing"
            and self._rebuild_ts is not None
            and s.active_since is not None
            and s.active_since <= self._rebuild_ts
        )

    async def _commit(self, result: Step, notify: tuple[str, ...], now: float) -> None:
        s = result.state
        deliveries: list[Delivery] = []
        if result.notify is not None or result.event is not None:
            nid = new_delivery_id()
            if result.notify is not None:
                notice = s.notice("resolved" if result.notify == "resolved" else "firing")
                if self._refound(s, result.notify):
                    notice = msgspec.structs.replace(notice, summary=notice.summary + REFOUND_NOTE)
                    metrics.REFOUND.inc()
                    log.warning("alert.refound", rule=s.rule, fingerprint=s.fingerprint)
                deliveries += [
                    Delivery(
                        id=nid, channel=c, kind=result.notify, created_at=time.time(), notice=notice
                    )
                    for c in notify
                ]
            if result.event is not None:
                deliveries.append(
                    Delivery(
                        id=nid,
                        channel=EVENTS_CHANNEL,
                        kind=result.event,
                        created_at=time.time(),
                        notice=s.notice(result.event),
                    )
                )
        if not await self.store.commit(s.fingerprint, s, deliveries):
            raise NotLeader
        previous = self.states.get(s.fingerprint)
        self.states[s.fingerprint] = s
        if previous is None or previous.state != s.state:
            metrics.TRANSITIONS.labels(s.rule, s.state).inc()
            log.info(
                "alert.state",
                rule=s.rule,
                fingerprint=s.fingerprint,
                state=s.state,
                value=s.value,
                threshold=s.threshold,
                silenced_by=s.silenced_by,
                notify=result.notify,
            )
        elif result.notify == "repeat":
            log.info("alert.repeat", rule=s.rule, fingerprint=s.fingerprint, value=s.value)
        self.dispatcher.submit(deliveries)

    async def _reconcile(self) -> None:
        """After a reload: forget alerts of rules that are gone (telling receivers if they
        had been told it was firing)."""
        ruleset = self.rules()
        self._ruleset = ruleset
        live = {r.fingerprint for r in ruleset.rules}
        for fp, s in list(self.states.items()):
            if fp in live:
                continue
            deliveries: list[Delivery] = []
            if s.state == "firing":
                nid = new_delivery_id()
                s.summary = f"{s.summary} (rule removed)"
                notice = s.notice("resolved")
                deliveries.append(
                    Delivery(
                        id=nid,
                        channel=EVENTS_CHANNEL,
                        kind="resolved",
                        created_at=time.time(),
                        notice=notice,
                    )
                )
                if s.notified:
                    deliveries += [
                        Delivery(
                            id=nid,
                            channel=c,
                            kind="resolved",
                            created_at=time.time(),
                            notice=notice,
                        )
                        for c in s.channels
                        if c in ruleset.channels
                    ]
            if not await self.store.commit(fp, None, deliveries):
                raise NotLeader
            del self.states[fp]
            log.info("alert.forgotten", rule=s.rule, fingerprint=fp, state=s.state)
            self.dispatcher.submit(deliveries)

    def _update_gauges(self) -> None:
        counts = Counter(s.state for s in self.states.values())
        for name in ("inactive", "pending", "firing", "resolved"):
            metrics.ALERTS.labels(name).set(counts.get(name, 0))


async def _wait(event: asyncio.Event, stop: asyncio.Event) -> None:
    """Wait for `event` or `stop`, whichever comes first."""
    waiters = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
