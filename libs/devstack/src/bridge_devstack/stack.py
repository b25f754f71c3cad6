"""What `just up` runs: the five services, their ports, and the environment they share."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the contract: its console script, port variable and default port."""

    name: str
    command: str
    port_var: str
    default_port: int

    def port(self, env: dict[str, str]) -> int:
        raw = env.get(self.port_var, "").strip()
        return int(raw) if raw.isdigit() else self.default_port


#: the contract's services, in start order (producers before consumers)
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("notifier", "bridge-notifier", "BRIDGE_NOTIFIER_PORT", 9101),
    ServiceSpec("gateway", "bridge-gateway", "BRIDGE_GATEWAY_PORT", 8080),
    ServiceSpec("etl", "bridge-etl", "BRIDGE_ETL_PORT", 9102),
    ServiceSpec("metrics-api", "bridge-metrics-api", "BRIDGE_METRICS_API_PORT", 8081),
    ServiceSpec("alerter", "bridge-alerter", "BRIDGE_ALERTER_PORT", 9103),
)


def script(name: str) -> str:
    """The console script installed beside this interpreter (the workspace's .venv/bin)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Process:
    """A supervised child: `argv` runs under the keep-alive wrapper."""

    name: str
    argv: list[str]
    port: int | None = None

    def command_line(self) -> str:
        wrapper = [sys.executable, "-m", "bridge_devstack.keepalive", "--name", self.name, "--"]
        # exec: honcho runs the line through /bin/sh; the wrapper must be the group leader
        return "exec " + shlex.join([*wrapper, *self.argv])


@dataclass
class Stack:
    """Everything the supervisor needs: the children, their environment, the host."""

    env: dict[str, str]
    host: str = "127.0.0.1"
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def plan(cls, env: dict[str, str], *, demo: bool, demo_rate: float) -> Stack:
        host = env.get("BRIDGE_HOST", "127.0.0.1")
        stack = cls(env=env, host=host)
        for svc in SERVICES:
            stack.processes.append(Process(svc.name, [script(svc.command)], svc.port(env)))
        if demo:
            argv = [sys.executable, "-m", "bridge_devstack.demo", "--rate", str(demo_rate)]
            stack.processes.append(Process("demo", argv))
        return stack

    def url(self, service: str) -> str:
        port = next(p.port for p in self.processes if p.name == service)
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host  # noqa: S104
        return f"http://{host}:{port}"


def child_environment(base: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The environment every child sees: the caller's, the stack's URLs, local defaults."""
    env = {**base, **overrides}
    env.setdefault("BRIDGE_HOST", "127.0.0.1")
    env.setdefault("BRIDGE_LOG_FORMAT", "console")
    env.setdefault("BRIDGE_SHUTDOWN_TIMEOUT", "3")
    env.setdefault("BRIDGE_HEARTBEAT_INTERVAL", "2")
    env.setdefault("BRIDGE_SNAPSHOT_INTERVAL", "5")
    env["PYTHONUNBUFFERED"] = "1"
    return env
