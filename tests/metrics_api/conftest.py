from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from tests.support.processes import ServiceProcess
from tests.support.timescale import STORAGES


@pytest.fixture(scope="module", params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    """Every module runs on both storage paths: plain PostgreSQL, and TimescaleDB where
    `BRIDGE_TEST_TIMESCALE_DSN` names a server (tests/support/timescale.py)."""
    return str(request.param)


@pytest.fixture(scope="module")
def api_env(migrated_dsn: str, bridge_env: dict[str, str]) -> dict[str, str]:
    return {**bridge_env, "BRIDGE_SNAPSHOT_INTERVAL": "0.5"}


@pytest.fixture(scope="module")
def api(
    api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One metrics API process for the test module (its log is kept in the temp dir)."""
    proc = ServiceProcess("metrics_api", api_env, Path(tmp_path_factory.mktemp("metrics_api")))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def db(migrated_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
