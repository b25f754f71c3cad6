"""A private local Redis Cluster for tests: N primaries as `redis-server` processes.

Each node listens on a free loopback port and keeps its cluster config in a temp dir, so
`restart_primary(i)` brings the same node (same id, same slots) back on the same port.
Only the PIDs started here are ever signalled.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from .infra import free_port


def _system_binary(name: str) -> str:
    """The system's Redis 7 binary: a `redis-server` inside the virtualenv (a Python
    package's bundled 6.x) comes first on PATH under `uv run` and lacks sharded pub/sub."""
    for folder in ("/usr/bin", "/usr/local/bin"):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name) or name


REDIS_SERVER = _system_binary("redis-server")
REDIS_CLI = _system_binary("redis-cli")


@dataclass(frozen=True)
class TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """Generate them with the `openssl` command line (valid one day)."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=bridge-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "redis.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "redis.crt", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return TlsFiles(ca=folder / "ca.crt", cert=folder / "redis.crt", key=folder / "redis.key")


class RedisNode:
    """One `redis-server` process we own (standalone or a cluster member)."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        cluster: bool = False,
        appendonly: bool = False,
        extra: list[str] | None = None,
        password: str | None = None,
        binary: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.port = port or free_port()
        #: with TLS the node listens for TLS only (also on the cluster bus)
        self.tls = tls
        #: `requirepass` (and `masterauth` in a cluster): every client must authenticate
        self.password = password
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "redis.log"
        args = [
            binary or REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes" if appendonly else "no",
            "--logfile",
            str(self.log_path),
        ]
        if appendonly:
            # every acknowledged write survives kill -9 (the durability the suite relies on)
            args += ["--appendfsync", "always"]
        if cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / "nodes.conf"),
                "--cluster-node-timeout",
                "3000",
                # an explicit bus port: the default (port + 10000) may be taken or > 65535
                "--cluster-port",
                str(free_port()),
            ]
        if tls is not None:
            port_at = args.index("--port") + 1
            args[port_at] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(tls.cert),
                     "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
                     "--tls-auth-clients", "no"]  # fmt: skip
            if cluster:
                args += ["--tls-cluster", "yes"]
        if password:
            args += ["--requirepass", password]
            if cluster:
                args += ["--masterauth", password]
        self.args = args + (extra or [])
        self.proc: subprocess.Popen[bytes] | None = None

    def sync_client(self) -> redis.Redis:
        tls: dict[str, object] = {}
        if self.tls is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return redis.Redis(
            port=self.port, password=self.password, socket_connect_timeout=0.5, **tls
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> RedisNode:
        with open(self.dir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: {self.logs()[-2000:]}")
            try:
                with self.sync_client() as c:
                    if c.ping():
                        return self
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on {self.port} did not answer")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9, as a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self, *, hard: bool = True, down_for: float = 0.0) -> RedisNode:
        self.kill() if hard else self.stop()
        if down_for:
            time.sleep(down_for)
        return self.start()

    def logs(self) -> str:
        text = ""
        for path in (self.dir / "stdout.log", self.log_path):
            try:
                text += path.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text


class LocalRedisCluster:
    """N primaries, no replicas, all 16384 slots covered (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        primaries: int = 3,
        *,
        appendonly: bool = False,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.tls = tls
        self.nodes = [
            RedisNode(workdir, cluster=True, appendonly=appendonly, password=password, tls=tls)
            for _ in range(primaries)
        ]

    @property
    def nodes_env(self) -> str:
        """The `BRIDGE_REDIS_CLUSTER_NODES` value."""
        return ",".join(n.address for n in self.nodes)

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI,
                *(["-a", self.password, "--no-auth-warning"] if self.password else []),
                *(["--tls", "--cacert", str(self.tls.ca)] if self.tls else []),
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says `cluster_state:ok` and knows all the others."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                states = []
                for node in self.nodes:
                    with node.sync_client() as c:
                        info = c.execute_command("CLUSTER", "INFO")
                        text = info.decode() if isinstance(info, bytes) else str(info)
                        fields = dict(
                            line.split(":", 1) for line in text.splitlines() if ":" in line
                        )
                        states.append(
                            fields.get("cluster_state") == "ok"
                            and int(fields.get("cluster_known_nodes", 0)) >= len(self.nodes)
                            and int(fields.get("cluster_slots_ok", 0)) == 16384
                        )
                        last = text
                if all(states):
                    return
            except redis.exceptions.RedisError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(f"cluster not ok within {timeout}s: {last}")

    def node_for_slot(self, slot: int) -> int:
        """Index of the primary serving `slot`."""
        with self.nodes[0].sync_client() as c:
            for start, end, *owners in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(owners[0][1])
                    return next(i for i, n in enumerate(self.nodes) if n.port == port)
        raise LookupError(slot)

    def node_for_key(self, key: str) -> int:
        with self.nodes[0].sync_client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
        return self.node_for_slot(slot)

    def restart_primary(self, i: int, *, hard: bool = True, down_for: float = 0.0) -> None:
        """Crash (kill -9) or stop primary `i`, start it again, wait for the cluster."""
        self.nodes[i].restart(hard=hard, down_for=down_for)
        self.wait_ok()

    def client(self) -> RedisCluster:
        tls: dict[str, object] = {}
        if self.tls is not None:
            tls = {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
        return RedisCluster(
            host="127.0.0.1", port=self.nodes[0].port, password=self.password, **tls
        )

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@contextmanager
def redis_cluster(
    workdir: Path,
    primaries: int = 3,
    *,
    appendonly: bool = False,
    password: str | None = None,
    tls: TlsFiles | None = None,
) -> Iterator[LocalRedisCluster]:
    """A started cluster; with `password`, every node runs with `requirepass`; with `tls`,
    every node (and the cluster bus) speaks TLS only."""
    cluster = LocalRedisCluster(
        workdir, primaries, appendonly=appendonly, password=password, tls=tls
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@contextmanager
def redis_server(
    workdir: Path,
    *,
    appendonly: bool = True,
    password: str | None = None,
    binary: str | None = None,
) -> Iterator[RedisNode]:
    """A private standalone Redis (for tests that crash it); durable by default.
    `binary`: another redis-server (e.g. an old version, to test the refusal)."""
    node = RedisNode(workdir, appendonly=appendonly, password=password, binary=binary)
    try:
        yield node.start()
    finally:
        node.kill()
