"""deploy/grafana and deploy/prometheus against the code: every metric a dashboard panel or
an alerting rule reads is one a service really exports, grouped only by labels it has;
the Prometheus rules keep the alerter's default thresholds and windows; the files parse
(valid JSON / rule-file YAML)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "bridge-lite.json"
RULES = ROOT / "deploy" / "prometheus" / "bridge-alerts.yaml"
ALERTER_RULES = ROOT / "deploy" / "alerts.yaml"

_METRIC = re.compile(r"\b(bridge_[a-z0-9_]+)\b")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")

#: Prometheus rule → the alerter's default rule it mirrors
MIRRORS = {
    "BridgeCommitLagHigh": "commit_lag_high",
    "BridgeDeliveryLagHigh": "delivery_lag_high",
    "BridgeEtlStoreLagHigh": "etl_store_lag_high",
    "BridgeNotifierLagging": "notifier_lagging",
    "BridgeOutboxBacklog": "outbox_backlog",
    "BridgeEtlLagging": "etl_lagging",
    "BridgeTimescaleJobsFailing": "timescale_jobs_failing",
}


def exported() -> dict[str, set[str]]:
    """Every series name the five services can expose → its label names."""
    # module-level metrics register in the default registry when imported
    import bridge_alerter.metrics  # noqa: F401
    import bridge_common.http_guard  # noqa: F401
    import bridge_gateway.metrics  # noqa: F401
    import bridge_metrics_api.api  # noqa: F401
    import bridge_metrics_api.snapshot  # noqa: F401
    from bridge_etl.stats import EtlStats
    from bridge_notifier.metrics import RelayMetrics

    own = CollectorRegistry()
    RelayMetrics(own)
    EtlStats(own, mode="event")
    out: dict[str, set[str]] = {}
    for registry in (REGISTRY, own):
        for collector in list(registry._collector_to_names):  # noqa: SLF001 - the names as registered
            name = getattr(collector, "_name", None)
            kind = getattr(collector, "_type", None)
            if not isinstance(name, str) or not name.startswith("bridge_"):
                continue
            labels = set(getattr(collector, "_labelnames", ()))
            if kind == "counter":
                out[name + "_total"] = labels
            elif kind == "histogram":
                out[name + "_bucket"] = labels | {"le"}
                out[name + "_sum"] = labels
                out[name + "_count"] = labels
            else:
                out[name] = labels
    return out


def _check_expr(expr: str, where: str, names: dict[str, set[str]]) -> list[str]:
    problems = []
    used = set(_METRIC.findall(expr))
    if not used:
        problems.append(f"{where}: reads no Bridge metric: {expr}")
    for metric in used:
        if metric not in names:
            problems.append(f"{where}: {metric} is not exported by any service")
            continue
        for group in _BY.findall(expr):
            for label in (x.strip() for x in group.split(",")):
                if label and label not in names[metric]:
                    problems.append(f"{where}: {metric} has no label {label!r}")
    return problems


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def test_the_lag_histograms_are_exported_per_topic() -> None:
    names = exported()
    for metric in (
        "bridge_notifier_commit_lag_seconds_bucket",
        "bridge_gateway_delivery_lag_seconds_bucket",
        "bridge_etl_store_lag_seconds_bucket",
    ):
        assert names[metric] == {"topic", "le"}


def test_dashboard_is_valid_and_reads_only_exported_metrics() -> None:
    doc = _dashboard()
    assert doc["uid"] and doc["title"] and isinstance(doc["panels"], list)
    names = exported()
    problems: list[str] = []
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    targets = 0
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            targets += 1
            problems += _check_expr(t["expr"], f"panel {panel['title']!r}", names)
    assert not problems, "\n".join(problems)
    assert targets >= 10
    # the lag panels come first: one per hop
    titles = [p["title"] for p in doc["panels"] if p["type"] != "row"][:3]
    assert titles == ["Commit → relay publish", "Publish → gateway send", "Publish → ETL store"]


def test_prometheus_rules_parse_and_read_only_exported_metrics() -> None:
    doc = yaml.safe_load(RULES.read_text())
    names = exported()
    problems: list[str] = []
    seen: set[str] = set()
    for group in doc["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] not in seen, rule["alert"]
            seen.add(rule["alert"])
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
            problems += _check_expr(rule["expr"], f"rule {rule['alert']}", names)
    assert not problems, "\n".join(problems)
    assert set(MIRRORS) <= seen


@pytest.mark.parametrize(("prom_name", "alerter_name"), sorted(MIRRORS.items()))
def test_prometheus_rules_keep_the_alerters_thresholds(prom_name: str, alerter_name: str) -> None:
    prom = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}[
        prom_name
    ]
    alerter = {r["name"]: r for r in yaml.safe_load(ALERTER_RULES.read_text())["rules"]}[
        alerter_name
    ]
    comparison = re.search(r"(>=|<=|>|<)\s*([0-9.]+)\s*$", prom["expr"].strip())
    assert comparison, prom["expr"]
    assert comparison.group(1) == alerter["op"]
    assert float(comparison.group(2)) == float(alerter["threshold"])
    assert prom["for"] == alerter["for"]
    assert prom["labels"]["severity"] == alerter["severity"]


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (.ci/run installs Debian's prometheus package for it)",
)
def test_promtool_accepts_the_rule_file() -> None:
    """The rule file loads in Prometheus itself (expressions parse, durations valid)."""
    out = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
