"""Client tests run against real gateways backed by a PRIVATE redis-server, so killing
Redis never disturbs anyone else.

Tests that kill things get their own Redis and gateway (`private_redis`, `gateway`,
`jwt_gateway`); the others share one per module (`module_redis`, `module_gateway`,
`module_jwt_gateway`) and keep to their own topics.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess

#: HS256 secret of the JWT gateways: generated per run (the gateway refuses one written in
#: the repository, and anything under 32 bytes)
JWT_SECRET = "client-tests-" + secrets.token_urlsafe(48)


def _env(redis: RedisNode, namespace: str, **extra: str) -> dict[str, str]:
    return {
        "BRIDGE_REDIS_URL": redis.url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "info",
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
        "BRIDGE_AUTH": "disabled",
        **extra,
    }


JWT = {"BRIDGE_AUTH": "jwt", "BRIDGE_JWT_SECRET": JWT_SECRET}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisNode]:
    """Our own redis-server with `appendfsync always`: what it acknowledged survives kill -9."""
    node = RedisNode(tmp_path, appendonly=True).start()
    yield node
    node.stop()


@pytest.fixture
def gateway(
    spawn: Callable[..., ServiceProcess], private_redis: RedisNode, namespace: str
) -> ServiceProcess:
    return spawn("gateway", _env(private_redis, namespace))


@pytest.fixture
def jwt_gateway(
    spawn: Callable[..., ServiceProcess], private_redis: RedisNode, namespace: str
) -> ServiceProcess:
    return spawn("gateway", _env(private_redis, namespace, **JWT))


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    node = RedisNode(tmp_path_factory.mktemp("redis")).start()
    yield node
    node.stop()


def _module_gateway(
    tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]
) -> Iterator[ServiceProcess]:
    proc = ServiceProcess("gateway", env, tmp_path_factory.mktemp("gateway"))
    try:
        yield proc.start()
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def module_gateway(
    tmp_path_factory: pytest.TempPathFactory, module_redis: RedisNode, namespace: str
) -> Iterator[ServiceProcess]:
    yield from _module_gateway(tmp_path_factory, _env(module_redis, namespace))


@pytest.fixture(scope="module")
def module_jwt_gateway(
    tmp_path_factory: pytest.TempPathFactory, module_redis: RedisNode, namespace: str
) -> Iterator[ServiceProcess]:
    yield from _module_gateway(tmp_path_factory, _env(module_redis, namespace, **JWT))
