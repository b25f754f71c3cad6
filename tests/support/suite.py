"""The suite as real processes for end-to-end tests and the soak: a private database and
Redis (standalone or cluster) plus named service instances, with crash/restart by name."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import jwt

from .processes import ServiceProcess

#: generated per run: the gateway refuses a secret written in the repository
JWT_SECRET = "e2e-" + secrets.token_urlsafe(48)


def make_token(
    topics: list[str],
    *,
    secret: str = JWT_SECRET,
    sub: str = "e2e",
    ttl: float = 3600,
    alg: str = "HS256",
    extra: dict[str, object] | None = None,
) -> str:
    claims: dict[str, object] = {"sub": sub, "exp": int(time.time() + ttl), "topics": topics}
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=alg)


def suite_env(
    dsn: str,
    namespace: str,
    *,
    redis_url: str | None = None,
    cluster_nodes: str | None = None,
) -> dict[str, str]:
    env = {
        "BRIDGE_SOURCE_DSN": dsn,
        "BRIDGE_TARGET_DSN": dsn,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "info",
        "BRIDGE_HEARTBEAT_INTERVAL": "1",
        "BRIDGE_SNAPSHOT_INTERVAL": "2",
        "BRIDGE_JWT_SECRET": JWT_SECRET,
        "BRIDGE_AUTH": "jwt",
    }
    if cluster_nodes:
        env["BRIDGE_REDIS_CLUSTER_NODES"] = cluster_nodes
    if redis_url:
        env["BRIDGE_REDIS_URL"] = redis_url
    return env


class Suite:
    """Named service instances (e.g. `gateway-a`), each a real subprocess."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, ServiceProcess] = {}

    def start(
        self, name: str, service: str, args: list[str] | None = None, *, wait: bool = True
    ) -> ServiceProcess:
        proc = ServiceProcess(service, self.env, self.log_dir, args=args)
        self.procs[name] = proc
        return proc.start(wait_ready=wait, timeout=40)

    def url(self, name: str) -> str:
        return self.procs[name].url

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if not p.alive()]

    async def crash_restart(self, name: str, down_for: float = 1.0) -> None:
        """kill -9, stay down a moment, start again on the same port, wait until ready."""
        proc = self.procs[name]
        await asyncio.to_thread(proc.kill)
        log = getattr(proc, "_log", None)
        if log is not None:
            log.close()  # start() opens it again (append)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(proc.start, True, 40)

    async def wait_all_ready(self, timeout: float = 40) -> None:
        for proc in self.procs.values():
            await asyncio.to_thread(proc.wait_ready, timeout)

    def logs(self) -> str:
        return "\n".join(f"== {n}\n{p.logs()[-3000:]}" for n, p in self.procs.items())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()
