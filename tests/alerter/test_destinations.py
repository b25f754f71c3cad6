"""Channel URLs and webhook destinations (issue #22 item 8): hostile URLs are refused by
`check` and at start-up with their line, special addresses need an explicit allow-list,
and `test-notify` ends with one line, never a traceback."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bridge_alerter.destinations import (
    DEFAULT_ALLOWED,
    DestinationError,
    check_resolved,
    parse_networks,
)

from tests.alerter.receiver import Receiver

RULE = """
rules:
  - name: r
    metric: gateway.connections
    op: ">"
    threshold: 1
    severity: info
    summary: ok
    notify: [hook]
"""


def _rules(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "alerts.yaml"
    # json-style quoting keeps CR/LF as escapes inside the YAML string
    quoted = '"' + url.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n") + '"'
    path.write_text(f"channels:\n  hook: {{type: webhook, url: {quoted}}}\n{RULE}")
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge_alerter", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/a\r\nX-Injected: 1", "control characters"),
        ("http://hooks.example.com/a b", "control characters"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://0.0.0.0:9/x", "unspecified"),
        ("http://hooks.example.com:99999/x", "not a valid URL"),
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("http:///nohost", "no host"),
    ],
)
def test_check_refuses_hostile_channel_urls(tmp_path: Path, url: str, reason: str) -> None:
    done = _cli("check", str(_rules(tmp_path, url)))
    assert done.returncode == 1
    assert reason in done.stderr, done.stderr
    assert "channels.hook.url" in done.stderr and ":2:" in done.stderr
    assert "Traceback" not in done.stderr


def test_loopback_is_allowed_by_default_and_can_be_refused(tmp_path: Path) -> None:
    path = _rules(tmp_path, "http://127.0.0.1:9/hook")
    assert _cli("check", str(path)).returncode == 0
    refused = _cli("check", str(path), env={"BRIDGE_ALERTER_ALLOWED_NETWORKS": "none"})
    assert refused.returncode == 1 and "loopback" in refused.stderr
    metadata = _rules(tmp_path, "http://169.254.169.254/hook")
    opted_in = _cli(
        "check",
        str(metadata),
        env={"BRIDGE_ALERTER_ALLOWED_NETWORKS": "169.254.169.254"},
    )
    assert opted_in.returncode == 0, opted_in.stderr


def test_service_refuses_a_crlf_url_at_start_in_one_line(tmp_path: Path) -> None:
    path = _rules(tmp_path, "http://hooks.example.com/a\nb")
    done = subprocess.run(
        [sys.executable, "-m", "bridge_alerter", "--rules", str(path)],
        env={**os.environ, "BRIDGE_ALERTER_PORT": "0", "BRIDGE_REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "control characters" in done.stderr and "Traceback" not in done.stderr


def test_bad_allow_list_exits_2(tmp_path: Path) -> None:
    path = _rules(tmp_path, "http://127.0.0.1:9/hook")
    done = _cli(
        "--rules",
        str(path),
        "test-notify",
        "--channel",
        "hook",
        env={"BRIDGE_ALERTER_ALLOWED_NETWORKS": "not-a-network"},
    )
    assert done.returncode == 2
    assert "BRIDGE_ALERTER_ALLOWED_NETWORKS" in done.stderr and "Traceback" not in done.stderr


async def test_a_name_resolving_to_loopback_is_refused_when_sending() -> None:
    # `localhost` resolved by the system resolver, as at delivery time
    with pytest.raises(DestinationError, match="loopback"):
        await check_resolved("http://localhost:9/hook", ())
    await check_resolved("http://localhost:9/hook", parse_networks(DEFAULT_ALLOWED))


def test_test_notify_refuses_a_name_resolving_to_a_refused_address(tmp_path: Path) -> None:
    host = socket.gethostname()
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(host, 80)}
    except OSError:
        resolved = set()
    if not resolved or not all(ipaddress.ip_address(a).is_loopback for a in resolved):
        pytest.skip(f"this host's name {host!r} does not resolve to loopback only")
    with Receiver() as receiver:
        # the host name is not a literal address, so `check` lets it through; sending
        # resolves it to loopback, which is refused unless allowed
        port = receiver.server.server_address[1]
        path = _rules(tmp_path, f"http://{host}:{port}/hook")
        env = {"BRIDGE_ALERTER_ALLOWED_NETWORKS": "none"}
        assert _cli("check", str(path), env=env).returncode == 0
        done = _cli("--rules", str(path), "test-notify", "--channel", "hook", env=env)
        assert done.returncode == 1
        assert "refused destination" in done.stderr and "loopback" in done.stderr
        assert "Traceback" not in done.stderr
        assert receiver.at("/hook") == []
        # allowed (the default): delivered
        ok = _cli("--rules", str(path), "test-notify", "--channel", "hook")
        assert ok.returncode == 0, ok.stderr
        assert len(receiver.delivered("/hook")) == 1
