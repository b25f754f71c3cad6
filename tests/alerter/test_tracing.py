"""The alerter's spans through a real `bridge-alerter` process (issue #18): each snapshot
evaluation and each notification attempt is a span, exported to a local OTLP/HTTP
receiver when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; a webhook carries the delivery span's
`traceparent` header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.otlp import OtlpReceiver, otel_env, otlp_receiver

from .conftest import rules_yaml, wait_until

RULE = """\
  - name: error_rate_high
    metric: audit.error_rate_5m
    op: ">"
    threshold: 0.05
    severity: critical
    summary: "Audit error rate {{ value }}"
    notify: [hook]
"""


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as r:
        yield r


def test_evaluation_and_delivery_spans(
    spawn, alerter_env, receiver, feed, otlp: OtlpReceiver
) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(rules_yaml(receiver.url, RULE))
    feed.set({"audit.error_rate_5m": 0.2})
    spawn("alerter", {**alerter_env, **otel_env(otlp.url)})
    [hook] = receiver.wait(lambda: receiver.delivered("/hook"), what="firing webhook")

    evaluations = otlp.wait_for(
        lambda s: s.service == "bridge-alerter" and s.name == "alerter.evaluate"
    )
    assert evaluations[0].attributes["bridge.rules"] == 1
    wait_until(
        lambda: otlp.find(
            lambda s: s.name == "alerter.evaluate" and s.attributes.get("bridge.changed")
        ),
        what="an evaluation that changed a state",
    )
    (deliver, *_) = otlp.wait_for(
        lambda s: s.name == "alerter.deliver" and s.attributes.get("bridge.channel") == "hook"
    )
    assert deliver.attributes["bridge.rule"] == "error_rate_high"
    assert deliver.attributes["bridge.kind"] == "firing"
    assert deliver.parent_span_id == ""
    # the webhook carries the delivery span's context: the receiver can join the trace
    assert hook.headers["traceparent"].startswith(f"00-{deliver.trace_id}-{deliver.span_id}-")
