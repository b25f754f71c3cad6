"""Client tests run against real gateways backed by a PRIVATE redis-server per test,
so killing Redis never disturbs anyone else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import RedisNode
from tests.support.processes import ServiceProcess


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisNode]:
    """Our own redis-server with `appendfsync always`: what it acknowledged survives kill -9."""
    node = RedisNode(tmp_path, appendonly=True).start()
    yield node
    node.stop()


@pytest.fixture
def gateway_env(bridge_env: dict[str, str], private_redis: RedisNode) -> dict[str, str]:
    return {**bridge_env, "BRIDGE_REDIS_URL": private_redis.url, "BRIDGE_AUTH": "disabled"}


@pytest.fixture
def gateway(spawn: Callable[..., ServiceProcess], gateway_env: dict[str, str]) -> ServiceProcess:
    return spawn("gateway", gateway_env)
