"""With the real metrics API publishing the snapshot: failed intents in PostgreSQL → the
alert fires and resolves on the webhook, and the overview shows it while it fires."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.support.ops import ops_get

from .conftest import rules_yaml, wait_until

RULE = """\
  - name: intents_failing
    metric: intents.failed_5m
    op: ">="
    threshold: 3
    severity: warning
    summary: "{{ value }} intents failed in the last 5 minutes"
    notify: [hook]
"""


def test_metrics_api_snapshot_drives_the_alert(
    spawn, bridge_env, migrated_dsn, alerter_env, ns, receiver
) -> None:
    api_env = {**bridge_env, "BRIDGE_NAMESPACE": ns, "BRIDGE_SNAPSHOT_INTERVAL": "0.3"}
    api = spawn("metrics_api", api_env)
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    alerter = spawn("alerter", alerter_env)
    wait_until(lambda: '"evaluator.took_over"' in alerter.logs(), what="evaluating")
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO intents (title, status) SELECT 'bad ' || g, 'failed'"
            " FROM generate_series(1, 4) g"
        )
        [hook] = receiver.wait(lambda: receiver.delivered("/hook"), what="firing", timeout=30)
        notice = hook.json()
        assert notice["state"] == "firing" and notice["value"] == 4
        assert notice["summary"] == "4 intents failed in the last 5 minutes"
        # the dashboard reads the alerter's state
        firing = wait_until(
            lambda: ops_get(api.url + "/api/v1/dashboard/overview").json()["alerts"]["firing"],
            what="overview lists the alert",
        )
        assert [(a["rule"], a["fingerprint"]) for a in firing] == [
            ("intents_failing", notice["fingerprint"])
        ]
        conn.execute("UPDATE intents SET status = 'done' WHERE status = 'failed'")
    receiver.wait(lambda: len(receiver.delivered("/hook")) == 2, what="resolved", timeout=30)
    assert receiver.delivered("/hook")[1].json()["state"] == "resolved"
    assert alerter.stop() == 0 and api.stop() == 0
