"""The alert state machine: inactive → pending (for `for`) → firing → resolved, per rule.

`step` is pure: given a rule, its current state, the metric's value and the time, it
returns the next state and what to tell the outside world. Storage and sending live
elsewhere (`store`, `delivery`).

Flapping: a firing alert whose condition clears is resolved only once it has stayed clear
for the grace window; if the condition returns within the window it is the same incident
(same `started_at`, no new notification), so a value bouncing around its threshold sends
one firing and one resolved notification, not a storm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from bridge_common.events import AlertNotice

from .rules import Rule

StateName = Literal["inactive", "pending", "firing", "resolved"]
NotifyKind = Literal["firing", "repeat", "resolved"]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class AlertState:
    """What is known about one alert (rule + labels), as stored in `Channels.alert_state`."""

    fingerprint: str
    rule: str
    state: StateName = "inactive"
    severity: str = "info"
    metric: str = ""
    op: str = ">"
    threshold: float = 0.0
    value: float | None = None
    summary: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    #: the channels the rule notifies (so a removed rule can still resolve where it fired)
    channels: list[str] = field(default_factory=list)
    #: when the condition started to hold (pending since)
    active_since: float | None = None
    #: when the current incident started firing
    started_ts: float | None = None
    #: firing, but the condition has been false since then (resolves after the grace window)
    clear_since: float | None = None
    resolved_ts: float | None = None
    last_notified_ts: float | None = None
    #: receivers were told the current incident is firing (false while silenced)
    notified: bool = False
    silenced_by: str | None = None
    updated_ts: float = 0.0

    @classmethod
    def new(cls, rule: Rule) -> AlertState:
        return cls(fingerprint=rule.fingerprint, rule=rule.name)

    def to_json(self) -> dict[str, Any]:
        """The stored form: every `*_ts` as epoch seconds and every `*_at` as ISO 8601."""
        out = dataclasses.asdict(self)
        out["started_at"] = iso(self.started_ts)
        out["resolved_at"] = iso(self.resolved_ts)
        out["last_notified_at"] = iso(self.last_notified_ts)
        out["updated_at"] = iso(self.updated_ts)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def notice(self, state: Literal["firing", "resolved"]) -> AlertNotice:
        return AlertNotice(
            rule=self.rule,
            state=state,
            severity=self.severity,
            value=self.value,
            threshold=self.threshold,
            summary=self.summary,
            started_at=iso(self.started_ts) or "",
            fingerprint=self.fingerprint,
        )


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of one evaluation: the next state, whom to notify, what to publish."""

    state: AlertState
    changed: bool
    notify: NotifyKind | None = None
    #: a state change to publish on the `alerts` topic ("firing" or "resolved")
    event: Literal["firing", "resolved"] | None = None


def step(
    rule: Rule,
    current: AlertState,
    value: float | None,
    now: float,
    *,
    grace: float,
    silenced_by: str | None = None,
) -> Step:
    """Advance one alert by one observation (see the module docstring)."""
    if value is None:
        if rule.no_data == "keep":
            return Step(current, changed=False)
        holds = rule.no_data == "alerting"
    else:
        holds = rule.holds(value)
    s = dataclasses.replace(current, labels=dict(rule.labels), channels=list(rule.notify))
    s.rule, s.severity, s.metric, s.op = rule.name, rule.severity, rule.metric, rule.op
    s.threshold, s.value, s.silenced_by = rule.threshold, value, silenced_by
    s.summary = rule.render_summary(value)
    notify: NotifyKind | None = None
    event: Literal["firing", "resolved"] | None = None

    if s.state in ("inactive", "resolved", "pending") and holds:
        if s.state != "pending":
            s.state, s.active_since = "pending", now
        assert s.active_since is not None
        if now - s.active_since >= rule.for_seconds:
            s.state, s.started_ts, s.clear_since, s.resolved_ts = "firing", now, None, None
            s.notified = False
            event = "firing"
            if silenced_by is None:
                notify = "firing"
    elif s.state == "pending":  # and the condition no longer holds
        s.state, s.active_since = "inactive", None
    elif s.state == "firing" and holds:
        s.clear_since = None
        if silenced_by is None:
            if not s.notified:
                notify = "firing"  # a silence ended while it was firing
            elif (
                s.last_notified_ts is not None and now - s.last_notified_ts >= rule.repeat_interval
            ):
                notify = "repeat"
    elif s.state == "firing":  # condition cleared
        if s.clear_since is None:
            s.clear_since = now
        if now - s.clear_since >= grace:
            s.state, s.resolved_ts, s.active_since = "resolved", now, None
            event = "resolved"
            if s.notified and silenced_by is None:
                notify = "resolved"
            s.notified = False

    if notify is not None:
        s.last_notified_ts = now
        if notify != "resolved":
            s.notified = True
    changed = s != current
    if changed:
        s.updated_ts = now
    return Step(s, changed=changed, notify=notify, event=event)
