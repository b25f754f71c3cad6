"""compose.yaml, deploy/Dockerfile, deploy/k8s/*.yaml and .env.example agree with the code:
they parse, name only commands the workspace installs, set only variables the services'
settings classes accept (read from the classes at test time), and use matching ports."""

from __future__ import annotations

import importlib
import os
import re
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from bridge_common.settings import BridgeSettings
from pydantic import AliasChoices

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

#: console script → settings module of the service it runs (None: no service settings)
SERVICE_OF_COMMAND = {
    "bridge-notifier": "bridge_notifier.settings",
    "bridge-gateway": "bridge_gateway.settings",
    "bridge-etl": "bridge_etl.settings",
    "bridge-metrics-api": "bridge_metrics_api.settings",
    "bridge-alerter": "bridge_alerter.settings",
    "bridge-migrate": "bridge_common.migrate",
}
PORT_VAR = {
    "bridge-notifier": "BRIDGE_NOTIFIER_PORT",
    "bridge-gateway": "BRIDGE_GATEWAY_PORT",
    "bridge-etl": "BRIDGE_ETL_PORT",
    "bridge-metrics-api": "BRIDGE_METRICS_API_PORT",
    "bridge-alerter": "BRIDGE_ALERTER_PORT",
}
DEFAULT_PORT = {
    "bridge-notifier": 9101,
    "bridge-gateway": 8080,
    "bridge-etl": 9102,
    "bridge-metrics-api": 8081,
    "bridge-alerter": 9103,
}
#: read by something other than a settings class (documented where they are used)
NOT_SETTINGS = {"BRIDGE_DATA_DIR"}  # bridge-up's data folder
#: what the operator puts into the k8s Secret `bridge-secrets` (deploy/k8s/config.yaml says
#: how) and into `.env` for compose's required `${VAR:?…}`: never shipped, so made up here
OPERATOR_SECRET_NAME = "bridge-secrets"  # noqa: S105 - a name
OPERATOR_SECRETS = {
    "BRIDGE_SOURCE_DSN": "postgresql://bridge:pw@postgres.internal:5432/bridge",
    "BRIDGE_TARGET_DSN": "postgresql://bridge:pw@timescale.internal:5432/bridge",
    "BRIDGE_JWT_SECRET": secrets.token_urlsafe(48),
}


# -- what the code accepts -------------------------------------------------------------------


def workspace_pyprojects() -> list[Path]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    found = []
    for pattern in members:
        found.extend(sorted(p / "pyproject.toml" for p in ROOT.glob(pattern) if p.is_dir()))
    return [p for p in found if p.exists()]


def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for path in workspace_pyprojects():
        data = tomllib.loads(path.read_text())
        scripts.update(data.get("project", {}).get("scripts", {}))
    return scripts


def settings_classes(module_name: str) -> list[type[BridgeSettings]]:
    module = importlib.import_module(module_name)
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BridgeSettings)
        and obj.__module__ == module_name
    ]


def accepted_variables(cls: type[BridgeSettings]) -> set[str]:
    """Every environment variable the class reads: aliases, prefixed names, its port."""
    names: set[str] = {f"BRIDGE_{cls.service_name.upper().replace('-', '_')}_PORT"}
    prefix = str(cls.model_config.get("env_prefix", ""))
    for field_name, info in cls.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str))
        elif field_name != "port":
            names.add(f"{prefix}{field_name}".upper())
    return names


def service_classes(command: str) -> list[type[BridgeSettings]]:
    module = SERVICE_OF_COMMAND[command]
    if module is None:
        return [BridgeSettings]
    classes = settings_classes(module)
    assert classes, f"{module} defines no BridgeSettings subclass"
    return classes


def accepted_by(command: str) -> set[str]:
    out: set[str] = set()
    for cls in service_classes(command):
        out |= accepted_variables(cls)
    return out


def accepted_by_any() -> set[str]:
    out = accepted_variables(BridgeSettings)
    for command in SERVICE_OF_COMMAND:
        out |= accepted_by(command)
    return out


# -- what the files say ----------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {raw!r}"
            out[key.strip()] = value.strip()
    return out


_SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def substitute(value: str, given: dict[str, str] | None = None) -> str:
    """compose's interpolation with only `given` set: `${VAR:-default}` is the default,
    `${VAR:?message}` is `given[VAR]` (compose refuses to start without it)."""
    given = given or {}

    def one(m: re.Match[str]) -> str:
        name, op, rest = m.group(1), m.group(2) or "", m.group(3) or ""
        if name in given:
            return given[name]
        assert "?" not in op, f"compose requires {name}: {rest}"
        return rest if "-" in op else ""

    return _SUBST.sub(one, value)


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def bridge_compose_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose_services().items() if "command" in s and "image" in s
            and str(s["command"][0]).startswith("bridge-")}  # fmt: skip


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name in service.get("env_file", []):
        env.update(env_file(ROOT / name))
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    env.update({k: substitute(str(v), OPERATOR_SECRETS) for k, v in raw.items()})
    return env


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend((path.name, d) for d in load_yaml_docs(path))
    return docs


def k8s_of(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d.get("kind") == kind]


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            (cm,) = [
                c
                for c in k8s_of("ConfigMap")
                if c["metadata"]["name"] == source["configMapRef"]["name"]
            ]
            env.update({k: str(v) for k, v in cm["data"].items()})
        if "secretRef" in source:
            name = source["secretRef"]["name"]
            shipped = [s for s in k8s_of("Secret") if s["metadata"]["name"] == name]
            assert not shipped, f"k8s ships Secret {name}: the operator creates it"
            assert name == OPERATOR_SECRET_NAME, name
            env.update(OPERATOR_SECRETS)
    for item in container.get("env", []):
        env[item["name"]] = str(item["value"])
    return env


def pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    labels = doc["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def pod_containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for kind in ("Deployment", "Job"):
        for doc in k8s_of(kind):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                out.append((doc["metadata"]["name"], c))
    return out


def check_settings_accept(command: str, env: dict[str, str], where: str) -> None:
    """Every BRIDGE_* variable is known, and the service's settings class validates them all."""
    bridge_vars = {k for k in env if k.startswith("BRIDGE_")}
    unknown = sorted(bridge_vars - accepted_by_any() - NOT_SETTINGS)
    assert unknown == [], f"{where}: no settings class reads {unknown}"
    for cls in service_classes(command):
        with pytest.MonkeyPatch.context() as mp:
            for key in list(os.environ):
                if key.startswith("BRIDGE_") or key in ("POSTGRES_DSN", "DATABASE_URL"):
                    mp.delenv(key)
            for key, value in env.items():
                mp.setenv(key, value)
            cls(_env_file=None)  # type: ignore[call-arg]  # raises on any invalid value


# -- tests -----------------------------------------------------------------------------------


def test_every_file_parses() -> None:
    assert compose_services()
    names = [p.name for p in K8S.glob("*.yaml")]
    assert {"gateway.yaml", "migrate-job.yaml", "config.yaml", "kustomization.yaml"} <= set(names)
    for path in K8S.glob("*.yaml"):
        for doc in load_yaml_docs(path):
            assert {"apiVersion", "kind"} <= set(doc), path.name
    assert env_file(ROOT / ".env.example")


def test_settings_are_found_for_every_service() -> None:
    for command in PORT_VAR:
        names = accepted_by(command)
        assert PORT_VAR[command] in names
        assert {"BRIDGE_SOURCE_DSN", "BRIDGE_REDIS_URL", "BRIDGE_NAMESPACE"} <= names


def test_compose_commands_exist_and_env_is_accepted() -> None:
    scripts = console_scripts()
    services = bridge_compose_services()
    commands = {s["command"][0] for s in services.values()}
    assert commands == set(SERVICE_OF_COMMAND), commands
    for name, service in services.items():
        command = service["command"][0]
        assert command in scripts, f"compose {name}: {command} is not a console script"
        check_settings_accept(command, compose_env(service), f"compose {name}")


def test_compose_ports_and_healthchecks_match() -> None:
    for name, service in bridge_compose_services().items():
        command = service["command"][0]
        if command == "bridge-migrate":
            assert service.get("restart") == "no"
            continue
        env = compose_env(service)
        port = int(env.get(PORT_VAR[command], DEFAULT_PORT[command]))
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in probe, f"compose {name}: {probe}"
        published = [str(p) for p in service.get("ports", [])] + [
            str(p) for p in service.get("expose", [])
        ]
        assert published, f"compose {name} exposes no port"
        for mapping in published:
            assert mapping.rsplit(":", 1)[-1] == str(port), f"compose {name}: {mapping} vs {port}"


def test_compose_dependencies_and_volumes() -> None:
    data = compose()
    services = data["services"]
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("timescaledb", "redis"):
        assert "healthcheck" in services[name]
    gateways = [
        s for s in bridge_compose_services().values() if s["command"][0] == "bridge-gateway"
    ]
    assert len(gateways) >= 2
    host_ports = {str(p).split(":")[0] for g in gateways for p in g["ports"]}
    assert len(host_ports) == len(gateways), "gateway replicas need distinct host ports"
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services and dep != name, f"{name} depends on {dep}"
            assert cond["condition"] in valid
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
        if service.get("command", [""])[0] not in ("bridge-migrate", ""):
            if str(service["command"][0]).startswith("bridge-"):
                assert (
                    service["depends_on"]["migrate"]["condition"]
                    == "service_completed_successfully"
                )
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in data["volumes"], f"{name}: volume {source} is not declared"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).exists()


def test_k8s_commands_exist_and_env_is_accepted() -> None:
    scripts = console_scripts()
    seen = set()
    for name, container in pod_containers():
        command = container["command"][0]
        assert command in scripts, f"k8s {name}: {command} is not a console script"
        seen.add(command)
        check_settings_accept(command, k8s_env(container), f"k8s {name}")
    assert seen == set(SERVICE_OF_COMMAND)


def test_k8s_ports_probes_and_selectors_match() -> None:
    deployments = {d["metadata"]["name"]: d for d in k8s_of("Deployment")}
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container["command"][0]
        port = int(k8s_env(container).get(PORT_VAR[command], DEFAULT_PORT[command]))
        (declared,) = container["ports"]
        assert declared["containerPort"] == port, name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] in (declared["name"], port)
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port", str(port)) == str(port)
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    for service in k8s_of("Service"):
        selector = service["spec"]["selector"].items()
        selected = [d for d in deployments.values() if selector <= pod_labels(d).items()]
        assert len(selected) == 1, service["metadata"]["name"]
        (container,) = selected[0]["spec"]["template"]["spec"]["containers"]
        names = {p["name"] for p in container["ports"]} | {
            p["containerPort"] for p in container["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names
    for pdb in k8s_of("PodDisruptionBudget"):
        match = pdb["spec"]["selector"]["matchLabels"]
        assert any(match.items() <= pod_labels(d).items() for d in deployments.values())
    (hpa,) = k8s_of("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in deployments
    assert (
        deployments[target["name"]]["spec"]["template"]["spec"]["containers"][0]["command"][0]
        == "bridge-gateway"
    )
    gateway_match = deployments[target["name"]]["spec"]["selector"]["matchLabels"]
    budgets = k8s_of("PodDisruptionBudget")
    assert any(p["spec"]["selector"]["matchLabels"] == gateway_match for p in budgets)
    (job,) = k8s_of("Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["bridge-migrate"]


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = load_yaml_docs(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_env_example_is_accepted_by_every_service() -> None:
    env = env_file(ROOT / ".env.example")
    for command in SERVICE_OF_COMMAND:
        check_settings_accept(command, env, ".env.example")
    for command, var in PORT_VAR.items():
        assert int(env[var]) == DEFAULT_PORT[command]


def test_dockerfile_layers_and_user() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M)
    assert len(froms) >= 3, "multi-stage: uv, build, runtime"
    deps = text.index("--no-install-workspace")
    code = text.index("COPY libs libs")
    assert deps < code, "the dependencies layer comes before the code"
    assert "uv sync --locked" in text
    for pyproject in workspace_pyprojects():
        rel = pyproject.relative_to(ROOT).as_posix()
        assert f"COPY {rel} {rel}" in text or rel == "pyproject.toml", f"Dockerfile misses {rel}"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    cmd = re.findall(r"^CMD\s+\[\"([^\"]+)\"", text, flags=re.M)
    assert cmd and cmd[-1] in console_scripts()
    exposed = {
        int(p) for line in re.findall(r"^EXPOSE\s+(.+)$", text, flags=re.M) for p in line.split()
    }
    assert set(DEFAULT_PORT.values()) <= exposed


def test_command_arguments_are_understood() -> None:
    """Arguments given to a command in compose/k8s are options its --help lists."""
    uses: set[tuple[str, str]] = set()
    for service in bridge_compose_services().values():
        uses.update(
            (service["command"][0], a) for a in service["command"][1:] if a.startswith("--")
        )
    for _, container in pod_containers():
        uses.update(
            (container["command"][0], a) for a in container["command"][1:] if a.startswith("--")
        )
    bin_dir = Path(sys.executable).parent
    for command, option in sorted(uses):
        result = subprocess.run([str(bin_dir / command), "--help"], capture_output=True, text=True,
                                timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert option in result.stdout, f"{command} --help does not list {option}"


# -- secrets ---------------------------------------------------------------------------------

#: `BRIDGE_JWT_SECRET=value` / `BRIDGE_JWT_SECRET: value` in a shipped file
_SECRET_ASSIGNMENT = re.compile(r"BRIDGE_JWT_SECRET\s*[:=]\s*['\"]?([^\s'\"#]+)")


def shipped_jwt_secret_values() -> dict[str, str]:
    """Every literal JWT secret the shipped files assign (value → where), commented or not."""
    files = [ROOT / "compose.yaml", ROOT / ".env.example", ROOT / "README.md"]
    files += sorted((ROOT / "deploy").rglob("*.yaml")) + sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "libs").glob("*/README.md"))
    found: dict[str, str] = {}
    for path in files:
        for m in _SECRET_ASSIGNMENT.finditer(path.read_text()):
            value = m.group(1)
            if value.startswith(("${", "$(", "$BRIDGE")):
                continue  # a reference to the operator's value, not a value
            found[value] = path.relative_to(ROOT).as_posix()
    return found


def test_no_jwt_secret_is_shipped_with_a_default() -> None:
    # compose: the gateways require the variable (interpolation fails without it) ...
    gateways = {
        n: s for n, s in bridge_compose_services().items() if s["command"][0] == "bridge-gateway"
    }
    for service in gateways.values():
        raw = str(service["environment"]["BRIDGE_JWT_SECRET"])
        with pytest.raises(AssertionError, match="compose requires BRIDGE_JWT_SECRET"):
            substitute(raw)
    # ... and nothing else carries one
    for name, service in bridge_compose_services().items():
        if name not in gateways:
            assert "BRIDGE_JWT_SECRET" not in service.get("environment", {}), name
    assert "BRIDGE_JWT_SECRET" not in env_file(ROOT / ".env.example")
    # k8s: no Secret manifest at all, nothing secret in a ConfigMap; the gateway reads the
    # operator's Secret
    assert k8s_of("Secret") == []
    for cm in k8s_of("ConfigMap"):
        assert "BRIDGE_JWT_SECRET" not in cm["data"]
    gateway = [c for _, c in pod_containers() if c["command"][0] == "bridge-gateway"]
    assert gateway
    for container in gateway:
        refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert refs == [OPERATOR_SECRET_NAME]
    # whatever literal value the files still show (commented examples) is refused
    from bridge_common.jwt_secret import secret_problem

    for value, where in shipped_jwt_secret_values().items():
        assert secret_problem(value), f"{where} shows a JWT secret the gateway would accept"
