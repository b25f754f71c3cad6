from __future__ import annotations

import subprocess
import sys

import pytest
from bridge_common.settings import BridgeSettings, load_settings


class GatewayLike(BridgeSettings):
    service_name = "gateway"
    default_port = 8080


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for var in (
        "BRIDGE_SOURCE_DSN",
        "POSTGRES_DSN",
        "DATABASE_URL",
        "BRIDGE_TARGET_DSN",
        "BRIDGE_GATEWAY_PORT",
        "BRIDGE_NAMESPACE",
        "BRIDGE_REDIS_CLUSTER_NODES",
        "BRIDGE_LOG_LEVEL",
        "BRIDGE_PORT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults() -> None:
    s = GatewayLike()
    assert s.source_dsn == "postgresql://localhost/bridge"
    assert s.effective_target_dsn == s.source_dsn
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.namespace == "bridge"
    assert s.port == 8080
    assert s.snapshot_interval == 10 and s.heartbeat_interval == 5
    assert s.log_format == "json"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "postgresql://d/x"}, "postgresql://d/x"),
        (
            {"DATABASE_URL": "postgresql://d/x", "POSTGRES_DSN": "postgresql://p/x"},
            "postgresql://p/x",
        ),
        (
            {
                "DATABASE_URL": "postgresql://d/x",
                "POSTGRES_DSN": "postgresql://p/x",
                "BRIDGE_SOURCE_DSN": "postgresql://b/x",
            },
            "postgresql://b/x",
        ),
    ],
)
def test_dsn_fallback_order(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert GatewayLike().source_dsn == expected


def test_target_dsn_and_port_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TARGET_DSN", "postgresql://ts/x")
    monkeypatch.setenv("BRIDGE_GATEWAY_PORT", "9999")
    s = GatewayLike()
    assert s.effective_target_dsn == "postgresql://ts/x"
    assert s.port == 9999
    assert load_settings(GatewayLike, port=1234).port == 1234


def test_env_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("BRIDGE_NAMESPACE=fromfile\n")
    assert GatewayLike().namespace == "fromfile"


def test_otel_settings_become_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert GatewayLike().otel_env() == {}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", " http://collector:4318 ")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "OTLP, console")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    assert GatewayLike().otel_env() == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_TRACES_EXPORTER": "otlp,console",
    }


def test_cluster_nodes_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_REDIS_CLUSTER_NODES", "127.0.0.1:7000, 127.0.0.1:7001")
    assert GatewayLike().cluster_nodes == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("BRIDGE_GATEWAY_PORT", "eighty", "BRIDGE_GATEWAY_PORT"),
        ("BRIDGE_GATEWAY_PORT", "70000", "BRIDGE_GATEWAY_PORT"),
        ("BRIDGE_NAMESPACE", "has space", "BRIDGE_NAMESPACE"),
        ("BRIDGE_REDIS_URL", "http://nope", "BRIDGE_REDIS_URL"),
        ("BRIDGE_REDIS_CLUSTER_NODES", "host-without-port", "BRIDGE_REDIS_CLUSTER_NODES"),
        ("DATABASE_URL", "mysql-ish", "BRIDGE_SOURCE_DSN"),
        ("BRIDGE_LOG_LEVEL", "loud", "BRIDGE_LOG_LEVEL"),
        ("BRIDGE_SNAPSHOT_INTERVAL", "-1", "BRIDGE_SNAPSHOT_INTERVAL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "grpc://c:4317",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        ("OTEL_TRACES_EXPORTER", "jaeger", "OTEL_TRACES_EXPORTER"),
        ("OTEL_SDK_DISABLED", "maybe", "OTEL_SDK_DISABLED"),
    ],
)
def test_bad_values_exit_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys, var: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SystemExit) as exc:
        load_settings(GatewayLike)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert needle in err and err.startswith("gateway: invalid configuration")


@pytest.mark.parametrize(
    "module",
    ["bridge_notifier", "bridge_gateway", "bridge_etl", "bridge_metrics_api", "bridge_alerter"],
)
def test_every_service_rejects_bad_config(module: str, tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BRIDGE_NAMESPACE": "bad namespace!", "BRIDGE_AUTH": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", module],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "BRIDGE_NAMESPACE" in lines[0]


def test_port_variable_in_env_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("BRIDGE_GATEWAY_PORT=7777\nBRIDGE_PORT=5555\n")
    assert GatewayLike().port == 7777
    monkeypatch.setenv("BRIDGE_GATEWAY_PORT", "7778")  # the environment wins over the file
    assert GatewayLike().port == 7778
    assert load_settings(GatewayLike, port=1234).port == 1234  # and --port over both


def test_bridge_port_alone_moves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "5555")
    assert GatewayLike().port == 8080
