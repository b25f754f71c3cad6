"""Where the tests' PostgreSQL and Redis come from, and per-module isolation.

Order: `BRIDGE_TEST_DSN` / `BRIDGE_TEST_REDIS_URL`; else the local services on their
default ports; else a testcontainers container when a Docker engine answers; else the
tests that need them are skipped with the reason (never a silent pass).
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def _pg_answers(dsn: str) -> str | None:
    try:
        with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


def _redis_answers(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
        client.close()
        return None
    except Exception as exc:
        return str(exc)


@contextmanager
def postgres_admin_dsn() -> Iterator[tuple[str | None, str]]:
    """Yield (admin DSN or None, why-not)."""
    explicit = os.environ.get("BRIDGE_TEST_DSN")
    if explicit:
        err = _pg_answers(explicit)
        yield (None, f"BRIDGE_TEST_DSN does not answer: {err}") if err else (explicit, "")
        return
    if _pg_answers(LOCAL_DSN) is None:
        yield LOCAL_DSN, ""
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None) as pg:
            yield pg.get_connection_url(), ""
        return
    yield None, ("no PostgreSQL: set BRIDGE_TEST_DSN, run one on 127.0.0.1:5432, or start Docker")


@contextmanager
def redis_url() -> Iterator[tuple[str | None, str]]:
    explicit = os.environ.get("BRIDGE_TEST_REDIS_URL")
    if explicit:
        err = _redis_answers(explicit)
        yield (None, f"BRIDGE_TEST_REDIS_URL does not answer: {err}") if err else (explicit, "")
        return
    if _redis_answers(LOCAL_REDIS) is None:
        yield LOCAL_REDIS, ""
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as r:
            yield f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}/0", ""
        return
    yield None, "no Redis: set BRIDGE_TEST_REDIS_URL, run one on 127.0.0.1:6379, or start Docker"


def with_database(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + dbname))


def unique_name(prefix: str, hint: str = "") -> str:
    hint = re.sub(r"[^a-z0-9]+", "_", hint.lower()).strip("_")[-30:]
    return f"{prefix}_{hint}_{uuid.uuid4().hex[:8]}" if hint else f"{prefix}_{uuid.uuid4().hex[:8]}"


def create_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_namespace(url: str, namespace: str) -> None:
    """Remove every key of a namespace (both `ns:…` and `{ns}:…` forms)."""
    client = redis.Redis.from_url(url)
    try:
        for pattern in (f"{namespace}:*", f"{{{namespace}}}:*"):
            batch = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)
    finally:
        client.close()


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
