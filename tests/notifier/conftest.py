"""Fixtures of the notifier tests: an async client on the suite's Redis, a private
redis-server and a private PostgreSQL cluster that a test may crash and restart, and a
private Redis Cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
import redis.asyncio as aredis

from tests.support.cluster import LocalRedisCluster, RedisNode, redis_cluster, redis_server
from tests.support.infra import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
async def aredis_client(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisNode]:
    """A redis-server of our own (AOF, fsync always): kill -9 and restart keep its data."""
    with redis_server(tmp_path, appendonly=True) as node:
        yield node


@pytest.fixture(scope="module")
def private_redis_cluster() -> Iterator[LocalRedisCluster]:
    with tempfile.TemporaryDirectory(prefix="bridge-notifier-cluster-") as tmp:
        with redis_cluster(Path(tmp), 3) as cluster:
            yield cluster


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own (initdb in a temp dir, run as user `postgres`),
    so a test can restart it without touching the shared server."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        cmd = [*args] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
        # output to a file, never a pipe: the server pg_ctl starts would inherit it
        with open(self.dir / "pg_ctl.out", "ab") as out:
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT, timeout=60)

    def init(self) -> None:
        self._as_postgres(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c track_commit_timestamp=on -c fsync=off"
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "pg.log"),
            "-w",
            "start",
        )

    def restart(self) -> None:
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-m",
            "fast",
            "-l",
            str(self.dir / "pg.log"),
            "-w",
            "restart",
        )

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    tmp = Path(tempfile.mkdtemp(prefix="bridge-notifier-pg-"))
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    pg = PrivatePostgres(tmp)
    try:
        pg.init()
        pg.start()
        deadline = time.monotonic() + 20
        while not pg.answers():
            assert time.monotonic() < deadline, "private PostgreSQL did not start"
            time.sleep(0.1)
        yield pg
    finally:
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
