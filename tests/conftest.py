"""Shared fixtures: real PostgreSQL and Redis, a fresh database and Redis namespace per
test module, and real service subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import infra, timescale
from tests.support.processes import ServiceProcess
from tests.support.suite import JWT_SECRET


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    with infra.postgres_admin_dsn() as (dsn, why):
        if dsn is None:
            pytest.skip(why)
        yield dsn


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with infra.redis_url() as (url, why):
        if url is None:
            pytest.skip(why)
        yield url


def _module_hint(request: pytest.FixtureRequest) -> str:
    return request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")


@pytest.fixture(scope="module")
def storage() -> str:
    """The target storage this module's database is migrated for (`plain` or
    `timescale`); the ETL and metrics-API suites override it to run every module on
    both (`timescale.STORAGES`)."""
    return "plain"


@pytest.fixture(scope="module")
def db_dsn(storage: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test module (dropped afterwards); on a TimescaleDB
    server (`BRIDGE_TEST_TIMESCALE_DSN`) when the module runs the Timescale path."""
    if storage == "timescale":
        admin, why = timescale.server_dsn()
        if admin is None:
            pytest.skip(why)
    else:
        admin = request.getfixturevalue("pg_admin_dsn")
    name = infra.unique_name("bt", _module_hint(request))
    dsn = infra.create_database(admin, name)
    yield dsn
    infra.drop_database(admin, name)


@pytest.fixture(scope="module")
def migrated_dsn(db_dsn: str, storage: str) -> str:
    """The module's database with Bridge Lite's source and target schema applied."""
    import asyncio

    from bridge_common import migrate

    async def go() -> None:
        await migrate.apply(db_dsn, "source")
        await migrate.apply(db_dsn, "target", storage=storage)  # type: ignore[arg-type]

    asyncio.run(go())
    return db_dsn


@pytest.fixture(scope="module")
def namespace(redis_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis namespace nobody else uses; its keys are deleted afterwards."""
    ns = infra.unique_name("t", _module_hint(request))
    yield ns
    infra.delete_namespace(redis_url, ns)


@pytest.fixture(scope="module")
def bridge_env(db_dsn: str, redis_url: str, namespace: str) -> dict[str, str]:
    """Environment for a service subprocess bound to this module's database and namespace."""
    return {
        "BRIDGE_SOURCE_DSN": db_dsn,
        "BRIDGE_TARGET_DSN": db_dsn,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_NAMESPACE": namespace,
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_LOG_LEVEL": "info",
        "BRIDGE_HEARTBEAT_INTERVAL": "0.5",
        "BRIDGE_AUTH": "disabled",
        # the gateway ignores it with BRIDGE_AUTH=disabled; the metrics API verifies ops
        # tokens with it (tests.support.ops)
        "BRIDGE_JWT_SECRET": JWT_SECRET,
    }


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """`spawn("notifier", env, args=[...])` starts a service and waits for /readyz.

    Every process is stopped at the end of the test; its log is printed on failure.
    """
    started: list[ServiceProcess] = []

    def _spawn(service: str, env: dict[str, str], **kwargs: Any) -> ServiceProcess:
        wait = kwargs.pop("wait_ready", True)
        proc = ServiceProcess(service, env, tmp_path, **kwargs)
        started.append(proc)
        return proc.start(wait_ready=wait)

    yield _spawn
    for proc in started:
        proc.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        tmp = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
        if isinstance(tmp, Path):
            for log in sorted(tmp.glob("*.log")):
                report.sections.append((f"service log {log.name}", log.read_text()[-6000:]))
