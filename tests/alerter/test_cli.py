"""The command line as users type it: `check`, start-up with a bad file, SIGHUP reload,
`test-notify`, and `silence add|list|expire` against a running alerter."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from bridge_alerter.__main__ import main
from bridge_common.channels import Channels

from .conftest import rules_yaml, wait_until

RULE = """\
  - name: conn_high
    metric: gateway.connections
    op: ">"
    threshold: {threshold}
    severity: warning
    summary: "{{{{ value }}}} connections"
    notify: [hook]
"""

BAD = """\
channels:
  hook: {type: webhook, url: "http://127.0.0.1:9/x", secret: s}
rules:
  - name: a
    metric: gateway.connections
    op: "~"
    threshold: 1
    severity: info
    summary: ok
    notify: [hook]
  - name: b
    metric: gateway.connections
    op: ">"
    threshold: 1
    for: soon
    severity: info
    summary: ok
    notify: [nowhere]
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge_alerter", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cli_in_process(monkeypatch, capsys):  # noqa: ANN001, ANN201
    """The same command line, run in this process (no interpreter start-up per call)."""

    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            with pytest.raises(SystemExit) as info:
                main(list(args))
        out = capsys.readouterr()
        code = info.value.code
        return subprocess.CompletedProcess(args, int(code or 0), out.out, out.err)

    return run


def test_check_lists_every_error_with_its_line(tmp_path: Path, cli_in_process) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = cli("check", str(bad))
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[:3] == [
        f"{bad}:6: rules[0](a).op: must be one of > >= < <= == != (got '~')",
        f"{bad}:15: rules[1](b).for: bad duration 'soon' (use e.g. 500ms, 30s, 5m, 1h30m, 2d)",
        f"{bad}:18: rules[1](b).notify[0]: unknown channel 'nowhere' (channels: hook)",
    ]
    assert lines[3] == f"3 error(s) in {bad}"
    good = tmp_path / "good.yaml"
    good.write_text(rules_yaml("http://127.0.0.1:9", RULE.format(threshold=5)))
    res = cli_in_process("check", str(good), env={})
    assert res.returncode == 0 and "OK (1 rules, 2 channels)" in res.stdout
    assert cli_in_process("check", str(tmp_path / "missing.yaml"), env={}).returncode == 1


def test_invalid_rules_at_start_exit_2_with_one_line(
    tmp_path: Path, redis_url: str, cli_in_process
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    res = cli("--rules", str(bad), env={"BRIDGE_REDIS_URL": redis_url})
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert line.startswith(f"alerter: invalid rules file: 3 errors in {bad}: line 6:")
    res = cli_in_process(env={"BRIDGE_ALERT_RULES": str(tmp_path / "nope.yaml")})
    assert res.returncode == 2 and "cannot read" in res.stderr


def test_sighup_reload_applies_valid_and_keeps_old_on_invalid(
    spawn, alerter_env, receiver, feed, r, ns
) -> None:
    path = Path(alerter_env["BRIDGE_ALERT_RULES"])
    path.write_text(rules_yaml(receiver.url, RULE.format(threshold=100)))
    feed.set({"gateway.connections": 50})
    proc = spawn("alerter", alerter_env)
    wait_until(lambda: '"evaluator.took_over"' in proc.logs(), what="evaluating")
    time.sleep(0.3)
    assert not receiver.requests  # 50 is not above 100
    # an invalid file: logged with its errors, the old rules stay in force
    path.write_text(BAD)
    proc.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: '"rules.reload_rejected"' in proc.logs(), what="rejected reload")
    assert "must be one of > >= < <= == !=" in proc.logs()
    assert proc.alive()
    time.sleep(0.3)
    assert not receiver.requests
    # a valid file with a lower threshold: applied on the next snapshot
    path.write_text(rules_yaml(receiver.url, RULE.format(threshold=10)))
    proc.proc.send_signal(signal.SIGHUP)
    [hook] = receiver.wait(lambda: receiver.delivered("/hook"), what="fires after reload")
    assert hook.json()["threshold"] == 10 and hook.json()["summary"] == "50 connections"
    # removing the rule resolves its firing alert and forgets it
    other = RULE.format(threshold=10).replace("conn_high", "x").replace("gateway.", "etl.")
    path.write_text(rules_yaml(receiver.url, other))
    feed.set({})
    proc.proc.send_signal(signal.SIGHUP)
    receiver.wait(lambda: len(receiver.delivered("/hook")) == 2, what="resolve of removed rule")
    assert receiver.delivered("/hook")[1].json()["state"] == "resolved"
    wait_until(
        lambda: [json.loads(v)["rule"] for v in r.hvals(Channels(ns).alert_state)] in ([], ["x"])
    )
    assert proc.stop() == 0


def test_test_notify_sends_to_webhook_and_slack(alerter_env, receiver, cli_in_process) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(
        rules_yaml(receiver.url, RULE.format(threshold=1))
    )
    res = cli("test-notify", "--channel", "hook", env=alerter_env)
    assert res.returncode == 0, res.stderr
    [hook] = receiver.delivered("/hook")
    sig = hmac.new(b"s3cret", hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["x-bridge-signature"] == f"sha256={sig}"
    assert hook.json()["rule"] == "bridge_alerter_test"
    # a real delivery id (UUIDv7), printed too, and a new one for every test message
    sent = uuid.UUID(hook.headers["x-bridge-delivery"])
    assert sent.version == 7 and str(sent) in res.stdout
    assert cli_in_process("test-notify", "--channel", "slack", env=alerter_env).returncode == 0
    assert "TEST" in receiver.delivered("/slack")[0].json()["text"]
    assert receiver.delivered("/slack")[0].headers["x-bridge-delivery"] != str(sent)
    res = cli_in_process("test-notify", "--channel", "nope", env=alerter_env)
    assert res.returncode == 2 and "unknown channel 'nope'" in res.stderr
    receiver.script("/hook", *[_answer(404)])
    res = cli_in_process("test-notify", "--channel", "hook", env=alerter_env)
    assert res.returncode == 1 and "HTTP 404" in res.stderr


def _answer(status: int):  # noqa: ANN202
    from .receiver import Answer

    return Answer(status)


def test_silence_add_list_expire(spawn, alerter_env, receiver, feed, r, ns, cli_in_process) -> None:
    Path(alerter_env["BRIDGE_ALERT_RULES"]).write_text(
        rules_yaml(receiver.url, RULE.format(threshold=10))
    )
    res = cli_in_process(
        "silence",
        "add",
        "--rule",
        "conn_high",
        "--for",
        "2h",
        "--comment",
        "deploy",
        env=alerter_env,
    )
    assert res.returncode == 0, res.stderr
    silence_id = res.stdout.strip()
    listing = cli_in_process("silence", "list", env=alerter_env).stdout
    assert silence_id in listing and "conn_high" in listing and "deploy" in listing
    feed.set({"gateway.connections": 50})
    proc = spawn("alerter", alerter_env)
    # the alert fires (state and `alerts` event) but nobody is notified
    state = wait_until(
        lambda: [
            json.loads(v)
            for v in r.hvals(Channels(ns).alert_state)
            if json.loads(v)["state"] == "firing"
        ],
        what="firing",
    )
    assert state[0]["silenced_by"] == silence_id
    wait_until(lambda: r.xlen(Channels(ns).stream("alerts")) == 1, what="event")
    time.sleep(0.5)
    assert not receiver.requests
    # the silence ends: the still-firing alert is notified now
    res = cli_in_process("silence", "expire", silence_id, env=alerter_env)
    assert res.returncode == 0
    [hook] = receiver.wait(lambda: receiver.delivered("/hook"), what="notified after expiry")
    assert hook.json()["state"] == "firing"
    assert silence_id not in cli_in_process("silence", "list", env=alerter_env).stdout
    assert silence_id in cli_in_process("silence", "list", "--all", env=alerter_env).stdout
    res = cli_in_process("silence", "add", "--rule", "typo", "--for", "1m", env=alerter_env)
    assert res.returncode == 0 and "has no rule 'typo'" in res.stderr
    assert cli_in_process("silence", "expire", "nosuch", env=alerter_env).returncode == 1
    assert (
        cli_in_process(
            "silence", "add", "--rule", "x", "--for", "later", env=alerter_env
        ).returncode
        == 2
    )
    assert proc.stop() == 0
