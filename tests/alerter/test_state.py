"""The state machine on its own: exact timing of `for`, repeat, grace, silences, no data."""

from __future__ import annotations

from bridge_alerter.rules import parse_rules
from bridge_alerter.state import AlertState, step

RULES = """\
channels: {hook: {type: webhook, url: "http://x"}}
rules:
  - name: r
    metric: m
    op: ">"
    threshold: 10
    for: 2s
    repeat_interval: 10s
    severity: warning
    summary: "{{ value }} > {{ threshold }}"
    notify: [hook]
    no_data: {no_data}
"""


def rule(no_data: str = "keep"):  # noqa: ANN201
    return parse_rules(RULES.replace("{no_data}", no_data)).rules[0]


def run(rule, values, *, grace=0.0, silenced=None):  # noqa: ANN001, ANN201
    """Feed (t, value) pairs; return [(t, state, notify, event)]."""
    s = AlertState.new(rule)
    out = []
    for t, v in values:
        res = step(rule, s, v, float(t), grace=grace, silenced_by=silenced)
        s = res.state
        out.append((t, s.state, res.notify, res.event))
    return out, s


def test_pending_for_then_firing_then_resolved() -> None:
    trace, s = run(rule(), [(0, 5), (1, 11), (2, 12), (3, 12), (4, 9), (5, 9)])
    assert trace == [
        (0, "inactive", None, None),
        (1, "pending", None, None),
        (2, "pending", None, None),  # held only 1s of the 2s
        (3, "firing", "firing", "firing"),
        (4, "resolved", "resolved", "resolved"),
        (5, "resolved", None, None),
    ]
    assert s.started_ts == 3 and s.resolved_ts == 4


def test_pending_that_clears_never_fires() -> None:
    trace, _ = run(rule(), [(0, 11), (1, 9), (2, 11), (3, 11), (4, 11)])
    assert [x[1] for x in trace] == ["pending", "inactive", "pending", "pending", "firing"]


def test_repeat_after_interval_only() -> None:
    trace, _ = run(rule(), [(0, 11), (2, 11), (5, 11), (11, 11), (12, 11), (22, 11)])
    assert [x[2] for x in trace] == [None, "firing", None, None, "repeat", "repeat"]


def test_grace_keeps_one_incident_through_flapping() -> None:
    values = [(0, 11), (2, 11), (3, 1), (4, 11), (5, 1), (6, 11), (7, 1), (9, 1), (10, 1)]
    trace, s = run(rule(), values, grace=2.5)
    assert [x[2] for x in trace if x[2]] == ["firing", "resolved"]
    assert trace[-1][1] == "resolved" and s.started_ts == 2 and s.resolved_ts == 10


def test_silenced_changes_state_without_notifying_then_notifies_when_it_ends() -> None:
    r = rule()
    s = AlertState.new(r)
    for t in (0, 2, 3):
        res = step(r, s, 11, t, grace=0, silenced_by="sil1")
        s = res.state
    assert s.state == "firing" and s.silenced_by == "sil1" and res.notify is None
    assert res.event is None  # the firing event went out at t=2 already
    res = step(r, s, 11, 4, grace=0)
    assert res.notify == "firing" and res.state.notified
    silenced_resolve = step(r, res.state, 1, 5, grace=0, silenced_by="sil2")
    assert silenced_resolve.state.state == "resolved" and silenced_resolve.notify is None


def test_resolve_is_not_sent_for_an_alert_nobody_heard_of() -> None:
    r = rule()
    trace, _ = run(r, [(0, 11), (2, 11), (3, 1)], silenced="s")
    assert [x[2] for x in trace] == [None, None, None]
    assert [x[3] for x in trace] == [None, "firing", "resolved"]


def test_no_data() -> None:
    _, s = run(rule("keep"), [(0, 11), (2, 11), (3, None), (30, None)])
    assert s.state == "firing"
    _, s = run(rule("ok"), [(0, 11), (2, 11), (3, None)])
    assert s.state == "resolved"
    trace, _ = run(rule("alerting"), [(0, None), (2, None)])
    assert [x[1] for x in trace] == ["pending", "firing"]


def test_stored_form_has_the_fields_the_metrics_api_reads() -> None:
    _, s = run(rule(), [(0, 11), (2, 11)])
    data = s.to_json()
    for key in (
        "rule",
        "state",
        "severity",
        "value",
        "threshold",
        "started_at",
        "last_notified_at",
        "fingerprint",
        "summary",
        "labels",
    ):
        assert key in data
    assert data["started_at"] == "1970-01-01T00:00:02Z"
    assert AlertState.from_json(data) == s
