"""Wire formats: the webhook body and signature, Slack's message, Retry-After parsing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from email.utils import formatdate

from bridge_alerter.notify import parse_retry_after, sign, slack_message, webhook_body
from bridge_common.events import AlertNotice

NOTICE = AlertNotice(
    rule="r",
    state="resolved",
    severity="critical",
    value=0.01,
    threshold=0.05,
    summary="all good",
    started_at="2026-11-28T17:00:00Z",
    fingerprint="abc",
)


def test_webhook_body_is_exactly_the_contract_and_signature_is_hmac_of_it() -> None:
    body = webhook_body(NOTICE)
    assert json.loads(body) == {
        "rule": "r",
        "state": "resolved",
        "severity": "critical",
        "value": 0.01,
        "threshold": 0.05,
        "summary": "all good",
        "started_at": "2026-11-28T17:00:00Z",
        "fingerprint": "abc",
    }
    expected = hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign("k", body) == f"sha256={expected}"


def test_slack_message_has_text_and_blocks() -> None:
    msg = slack_message(NOTICE, "resolved")
    assert msg["text"] == "[RESOLVED] r (critical): all good"
    assert msg["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "*value* 0.01" in json.dumps(msg["blocks"][1])
    assert "(still firing)" in slack_message(NOTICE, "repeat")["text"]
    assert slack_message(NOTICE, "test")["text"].startswith("[TEST]")


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0 and parse_retry_after("99999") == 3600.0
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 25 <= later <= 31
