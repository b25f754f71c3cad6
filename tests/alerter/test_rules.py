"""The rules file: every kind of bad file is reported, all errors at once, with lines."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest
from bridge_alerter.durations import parse_duration
from bridge_alerter.errors import RulesError
from bridge_alerter.rules import load_rules, parse_rules
from bridge_alerter.template import render
from bridge_common.snapshots import SNAPSHOT_METRICS

GOOD = """\
channels:
  ops-slack:   {type: slack,   url: "https://hooks.slack.com/services/T/B/X"}
  ops-webhook: {type: webhook, url: "http://hooks.example/alert", secret: "s"}
rules:
  - name: audit_error_rate_high
    metric: audit.error_rate_5m
    op: ">"
    threshold: 0.05
    for: 1m
    severity: critical
    summary: "Audit error rate {{ value }} above {{ threshold }}"
    notify: [ops-slack, ops-webhook]
"""


def problems(text: str, **kw: object) -> list[tuple[int, str]]:
    with pytest.raises(RulesError) as info:
        parse_rules(textwrap.dedent(text), "rules.yaml", **kw)  # type: ignore[arg-type]
    return [(p.line, f"{p.path}: {p.message}") for p in info.value.problems]


def test_the_contract_example_is_valid() -> None:
    rs = parse_rules(GOOD)
    [rule] = rs.rules
    assert rule.for_seconds == 60 and rule.repeat_interval == 4 * 3600
    assert rule.notify == ("ops-slack", "ops-webhook")
    assert rs.channels["ops-webhook"].secret == "s" and rs.channels["ops-slack"].type == "slack"
    assert rule.render_summary(0.0712) == "Audit error rate 0.0712 above 0.05"
    assert not rs.warnings


def test_bad_yaml_reports_its_line() -> None:
    [(line, msg)] = problems("channels: {}\nrules:\n  - name: [unclosed\n    metric: x\n")
    assert line in (3, 4, 5) and "invalid YAML" in msg


def test_every_error_of_a_rule_is_reported_with_its_line() -> None:
    text = (
        GOOD
        + """\
  - name: second
    metric: etl.lag_seconds
    op: "=>"
    threshold: high
    for: 10 minutes
    repeat_interval: 0s
    severity: urgent
    summary: "lag {{ valu }}"
    notify: [ops-slck, ops-slack, ops-slack]
    labels: {team: [a, b]}
    no_data: maybe
    colour: red
"""
    )
    got = problems(text)
    lines = dict(got)
    assert lines[15].endswith("must be one of > >= < <= == != (got '=>')")
    assert "must be a number, got a string ('high')" in lines[16]
    assert "bad duration '10 minutes'" in lines[17]
    assert "repeat_interval: must be greater than zero" in lines[18]
    assert "severity: must be one of debug info warning error critical" in lines[19]
    assert "unknown placeholder {{ valu }}" in lines[20]
    assert [m for ln, m in got if ln == 21] == [
        "rules[1](second).notify[0]: unknown channel 'ops-slck' (channels: ops-slack, ops-webhook)",
        "rules[1](second).notify[2]: channel 'ops-slack' listed twice",
    ]
    assert "labels.team: must be a string, got a list" in lines[22]
    assert "no_data: must be one of keep ok alerting" in lines[23]
    assert "unknown key 'colour'" in lines[24]
    assert len(got) == 11


def test_missing_fields_duplicates_and_wrong_types() -> None:
    text = """\
    channels:
      hook: {type: webhook, url: "http://x/y"}
      hook: {type: webhook, url: "http://x/z"}
      pager: {type: pagerduty, url: "http://x"}
      s: {type: slack, url: "ftp://x", secret: nope}
      w: {type: webhook}
    rules:
      - name: a
        metric: gateway.connections
      - name: a
        metric: gateway.connections
        op: ">"
        threshold: true
        severity: info
        summary: 12
        notify: hook
      - just a string
    extra: 1
    """
    got = problems(text)
    text_of = {ln: [m for l2, m in got if l2 == ln] for ln, _ in got}
    assert any("duplicate key 'hook' (first at line 2)" in m for m in text_of[3])
    assert any("type: must be one of slack webhook (got 'pagerduty')" in m for m in text_of[4])
    assert any("unknown key 'secret'" in m for m in text_of[5])
    assert any("url: must be an http:// or https:// URL" in m for m in text_of[5])
    assert any("channels.w: missing key 'url'" in m for m in text_of[6])
    assert sorted(m.split(": ", 1)[1] for m in text_of[8]) == sorted(
        f"missing key {k!r}" for k in ("op", "threshold", "severity", "summary", "notify")
    )
    assert any("duplicate rule name (first at line 8)" in m for m in text_of[10])
    assert any("threshold: must be a number, got a boolean (true)" in m for m in text_of[13])
    assert any("summary: must be a string, got a number (12)" in m for m in text_of[15])
    assert any("notify: must be a list of channel names" in m for m in text_of[16])
    assert any("rules[2]: a rule must be a mapping" in m for m in text_of[17])
    assert any("unknown key 'extra'" in m for m in text_of[18])


def test_empty_file_and_wrong_top_level() -> None:
    assert problems("") == [(1, ": the file is empty (expected 'channels:' and 'rules:')")]
    assert problems("- a\n- b\n") == [(1, ": the file must be a mapping, got a list")]
    assert problems("channels: {}\n") == [(1, ": missing key 'rules'")]
    assert problems("channels: {}\nrules: {a: 1}\n") == [
        (2, "rules: 'rules' must be a list, got a mapping")
    ]


def test_secrets_from_environment() -> None:
    text = GOOD.replace('secret: "s"', 'secret: "${HOOK_SECRET}"')
    assert parse_rules(text, env={"HOOK_SECRET": "abc"}).channels["ops-webhook"].secret == "abc"
    assert problems(text, env={}) == [
        (3, "channels.ops-webhook.secret: environment variable HOOK_SECRET is not set")
    ]


def test_unknown_metric_is_a_warning_not_an_error() -> None:
    rs = parse_rules(GOOD.replace("audit.error_rate_5m\n", "queue.depth\n"), "r.yaml")
    assert rs.warnings == (
        "r.yaml:6: rules[0](audit_error_rate_high).metric: 'queue.depth' is not a metric "
        "the metrics API is known to publish",
    )


@pytest.mark.parametrize("metric", sorted(SNAPSHOT_METRICS))
def test_every_published_metric_is_known(metric: str) -> None:
    rs = parse_rules(GOOD.replace("audit.error_rate_5m\n", f"{metric}\n"), "r.yaml")
    assert rs.rules[0].metric == metric and not rs.warnings


def test_fingerprint_is_stable_and_depends_on_name_and_labels_only() -> None:
    base = parse_rules(GOOD).rules[0]
    moved = parse_rules(GOOD.replace("threshold: 0.05", "threshold: 0.5")).rules[0]
    labelled = parse_rules(GOOD.replace("notify: [", "labels: {team: ops}\n    notify: [")).rules[0]
    assert base.fingerprint == moved.fingerprint  # thresholds may change, the alert stays
    expected = hashlib.sha256(b'["audit_error_rate_high",[]]').hexdigest()[:16]
    assert base.fingerprint == expected  # the same in every process and every release
    assert labelled.fingerprint != base.fingerprint and len(base.fingerprint) == 16


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        (15, 15.0),
        ("1.5s", 1.5),
        ("1w", 604800),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5", "5 minutes", "-1s", "1y", True, -3, [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_template_substitutes_text_and_never_evaluates() -> None:
    assert render("{{ value }}/{{threshold}}", {"value": "1", "threshold": "2"}) == "1/2"
    assert render("{{ __import__('os') }} {{ value.__class__ }}", {"value": "1"}) == (
        "{{ __import__('os') }} {{ value.__class__ }}"
    )


def test_shipped_rule_files_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/X",
        "BRIDGE_WEBHOOK_URL": "https://ops.example/hook",
        "BRIDGE_WEBHOOK_SECRET": "x",
    }
    example = load_rules(root / "alerts.example.yaml", env=env)
    assert {r.name for r in example.rules} >= {"audit_error_rate_high", "service_down"}
    assert not example.warnings
    assert load_rules(root / "deploy" / "alerts.yaml", env={}).rules


def test_hostile_files_are_refused_with_bounded_output(tmp_path: Path) -> None:
    assert problems("rules: " + "[" * 5000 + "]" * 5000 + "\n") == [
        (1, ": invalid YAML: nested too deeply")
    ]
    big = tmp_path / "big.yaml"
    big.write_bytes(b"rules: []\n" + b"# padding\n" * 120_000)
    with pytest.raises(RulesError, match="larger than 1024 KiB"):
        load_rules(big)
    many = tmp_path / "many.yaml"
    many.write_text("rules:\n" + "  - name: r\n    metric: audit.events_5m\n" * 5000)
    with pytest.raises(RulesError) as info:
        load_rules(many)
    assert len(info.value.problems) > 20_000  # all found ...
    lines = info.value.lines()
    assert len(lines) == 101 and lines[-1].endswith("more errors")  # ... a readable report
    assert len(info.value.one_line()) < 2000
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes(b"rules:\n  - name: \xff\xfe\n")
    with pytest.raises(RulesError, match="not UTF-8"):
        load_rules(not_utf8)


@pytest.mark.parametrize(
    ("metric", "known"),
    [
        ("gateway.delivery_lag_p99_seconds.intents", True),
        ("notifier.commit_lag_p50_seconds.audit_logs", True),
        ("etl.store_lag_p99_seconds.audit_logs", True),
        ("gateway.delivery_lag_p50_seconds.eu.orders", True),  # topics may hold dots
        ("gateway.delivery_lag_p99_seconds.", False),
        ("gateway.connections.intents", False),
    ],
)
def test_lag_metrics_are_known_per_topic(metric: str, known: bool) -> None:
    rs = parse_rules(GOOD.replace("audit.error_rate_5m\n", f"{metric}\n"), "r.yaml")
    assert (not rs.warnings) is known
