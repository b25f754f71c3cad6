"""Liveness and silence, as real processes: the default rules of deploy/alerts.yaml fire
when the notifier and the ETL are absent (and their figures stop arriving) and resolve
when they come; a SIGKILLed instance shows `down`, then ages out of `/api/v1/services` and
Redis, and `service_down` resolves instead of re-firing forever.

The rules are the shipped ones, with only a webhook channel to a local receiver added and
`for` shortened, so what is tested is their metric, condition and no-data handling."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from bridge_common.channels import Channels

from tests.alerter.receiver import Receiver
from tests.support.infra import delete_namespace, unique_name
from tests.support.ops import OPS
from tests.support.processes import ServiceProcess
from tests.support.suite import suite_env
from tests.support.waiting import eventually

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
HOOK = "/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def shipped_rules_to(receiver: Receiver, path: Path) -> set[str]:
    """deploy/alerts.yaml, every rule notifying the receiver after 1 s; returns rule names."""
    data = yaml.safe_load((ROOT / "deploy" / "alerts.yaml").read_text())
    data["channels"] = {"receiver": {"type": "webhook", "url": receiver.url + HOOK}}
    for rule in data["rules"]:
        rule["notify"] = ["receiver"]
        rule["for"] = "1s"
        rule.pop("repeat_interval", None)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return {r["name"] for r in data["rules"]}


def notices(receiver: Receiver) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.at(HOOK)]


def states_of(receiver: Receiver, rule: str) -> list[str]:
    return [n["state"] for n in notices(receiver) if n["rule"] == rule]


@pytest.fixture
def env(migrated_dsn: str, redis_url: str, namespace: str) -> dict[str, str]:
    return {
        **suite_env(migrated_dsn, namespace, redis_url=redis_url),
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
        "BRIDGE_HEARTBEAT_EXPIRY": "5",
        "BRIDGE_SNAPSHOT_INTERVAL": "0.5",
        "BRIDGE_ALERTER_RESOLVE_GRACE": "0",
    }


def test_default_rules_fire_on_absent_notifier_and_etl(
    env: dict[str, str],
    tmp_path: Path,
    spawn: Callable[..., ServiceProcess],
    receiver: Receiver,
) -> None:
    rules = tmp_path / "alerts.yaml"
    names = shipped_rules_to(receiver, rules)
    expected = {"notifier_absent", "etl_absent", "notifier_figures_missing", "etl_figures_missing"}
    assert expected <= names
    spawn("gateway", env)
    spawn("metrics_api", env)
    spawn("alerter", env, args=["--rules", str(rules)])

    def fired() -> set[str]:
        return {n["rule"] for n in notices(receiver) if n["state"] == "firing"}

    eventually(lambda: expected <= fired(), timeout=40, what=f"{expected} firing")
    assert "gateway_absent" not in fired()  # a gateway is running
    # the notices carry no figure for the silence, only for the presence count
    by_rule = {n["rule"]: n for n in notices(receiver)}
    assert by_rule["notifier_absent"]["value"] == 0
    assert by_rule["notifier_figures_missing"]["value"] is None

    # once they run (and report), the same rules resolve
    spawn("notifier", env)
    spawn("etl", env)
    eventually(
        lambda: all(states_of(receiver, r)[-1:] == ["resolved"] for r in expected),
        timeout=40,
        what="absent / figures-missing alerts resolved",
    )


def test_killed_instance_is_down_then_gone_and_service_down_resolves(
    env: dict[str, str],
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    spawn: Callable[..., ServiceProcess],
    receiver: Receiver,
) -> None:
    rules = tmp_path / "alerts.yaml"
    shipped_rules_to(receiver, rules)
    api = spawn("metrics_api", env)
    spawn("gateway", env)
    victim = spawn("gateway", env)
    alerter = spawn("alerter", env, args=["--rules", str(rules)])

    def state_of(port: int) -> str | None:
        body = httpx.get(api.url + "/api/v1/services", timeout=5, auth=OPS).json()
        for s in body["services"]:
            if s["service"] == "gateway" and s["status"].get("port") == port:
                return str(s["state"])
        return None

    eventually(lambda: state_of(victim.port) == "up", what="victim listed up")
    victim.kill()  # SIGKILL: no chance to remove its heartbeat
    eventually(lambda: state_of(victim.port) == "down", what="victim shown down")
    eventually(lambda: "firing" in states_of(receiver, "service_down"), what="service_down")
    # the expiry window (5 s here) passes: the instance is gone, from the API and from Redis
    eventually(lambda: state_of(victim.port) is None, timeout=30, what="victim gone")
    r = redis.Redis.from_url(redis_url)
    try:
        fields = [f.decode() for f in r.hkeys(Channels(namespace).services)]
    finally:
        r.close()
    assert len([f for f in fields if f.startswith("gateway/")]) == 1, fields
    eventually(
        lambda: states_of(receiver, "service_down")[-1:] == ["resolved"],
        timeout=30,
        what="service_down resolved",
    )
    overview = httpx.get(api.url + "/api/v1/dashboard/overview", timeout=5, auth=OPS).json()
    assert overview["services"]["down"] == 0
    assert overview["services"]["instances_up"]["gateway"] == 1
    # and it stays resolved: several more evaluations, no new notice for it
    seen = len(states_of(receiver, "service_down"))
    start = evaluations(alerter)
    eventually(lambda: evaluations(alerter) >= start + 6, what="six more evaluations")
    assert len(states_of(receiver, "service_down")) == seen


def test_no_snapshot_at_all_is_an_alert(
    env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    spawn: Callable[..., ServiceProcess],
    receiver: Receiver,
) -> None:
    """The metrics API is down (nothing publishes snapshots): the figures-missing rules
    fire from the alerter's own view of the silence."""
    rules = tmp_path / "alerts.yaml"
    shipped_rules_to(receiver, rules)
    # a namespace no metrics API ever published in (the other tests' snapshots are fresh)
    alone = {**env, "BRIDGE_NAMESPACE": unique_name("t", "silence")}
    alerter = spawn("alerter", alone, args=["--rules", str(rules)])
    wanted = {"notifier_figures_missing", "etl_figures_missing"}
    try:
        eventually(
            lambda: wanted <= {n["rule"] for n in notices(receiver) if n["state"] == "firing"},
            timeout=40,
            what=f"{wanted} firing without any snapshot",
        )
        # presence rules need a figure (0) to fire: with no snapshot they stay quiet
        assert not {"notifier_absent", "etl_absent"} & {n["rule"] for n in notices(receiver)}
    finally:
        alerter.stop()
        delete_namespace(redis_url, alone["BRIDGE_NAMESPACE"])


def evaluations(proc: ServiceProcess) -> float:
    for line in httpx.get(proc.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("bridge_alerter_evaluations_total "):
            return float(line.split()[1])
    return 0.0
