"""The lifecycle every service shares: signals, workers, health listener, heartbeat, shutdown.

A service opens its resources as async context managers, registers workers and readiness
checks on a :class:`Service`, and awaits :meth:`Service.run`::

    svc = Service(settings)
    async with open_pool(dsn) as pool, redis_client(settings) as r:
        svc.use_redis(r)
        svc.add_worker("relay", relay.run)          # async def run(stop: asyncio.Event)
        svc.add_ready_check("postgres", lambda: db.ping(pool))
        return await svc.run()

`run` serves `/healthz`, `/readyz` and `/metrics` (plus the service's own ASGI routes),
runs the workers in one TaskGroup, and on SIGTERM/SIGINT shuts down in order: stop
accepting, let workers drain until the deadline, cancel what is left, return — after
which the `async with` blocks close pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import liveness, tracing
from .channels import Channels
from .events import Heartbeat, dumps
from .http_guard import HttpLimits, guarded_protocol
from .logging import configure_logging, get_logger
from .redis import AnyRedis, RedisTooOld, create_redis, require_redis_version
from .settings import BridgeSettings, fail_config

Worker = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
ReadyCheck = Callable[[], Awaitable[object]]
StatusFn = Callable[[], dict[str, Any]]

log = get_logger(__name__)


def make_instance_id(service: str) -> str:
    """`<service>-<host>-<pid>-<4 hex>`: unique per process, readable in dashboards."""
    host = socket.gethostname().split(".")[0]
    return f"{service}-{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class _Server(uvicorn.Server):
    """uvicorn without its own signal capture: the Service owns signals and shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def redis_client(settings: BridgeSettings, **kwargs: Any) -> AsyncIterator[AnyRedis]:
    client = create_redis(settings, **kwargs)
    if isinstance(client, RedisCluster):
        # the async cluster client learns the slot map on its first command; pub/sub
        # (SSUBSCRIBE routing) needs it before that. A cluster that is down now is
        # retried lazily by the client, so a failure here is not fatal.
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await client.initialize()
    # Redis older than 7 is a configuration error: say so in one line and exit 2 (the
    # readiness check keeps refusing it should Redis only answer later, or change)
    try:
        await asyncio.wait_for(require_redis_version(client), 5.0)
    except RedisTooOld as exc:
        await client.aclose()
        fail_config(f"{settings.service_name}: {exc}")
    except (RedisError, RedisClusterException, OSError, TimeoutError):
        pass  # not answering yet: /readyz reports it until it does
    try:
        yield client
    finally:
        await client.aclose()


class Service:
    """One running service instance (see the module docstring)."""

    def __init__(
        self,
        settings: BridgeSettings,
        *,
        app: Starlette | None = None,
        registry: CollectorRegistry = REGISTRY,
        uvicorn_options: dict[str, Any] | None = None,
        sockets: list[socket.socket] | None = None,
    ) -> None:
        self.settings = settings
        #: listen on these already bound sockets (e.g. SO_REUSEPORT) instead of host:port
        self._sockets = sockets
        self.name = settings.service_name
        self.instance = make_instance_id(self.name)
        self.channels = Channels(settings.namespace)
        self.stop = asyncio.Event()
        self.started_at = time.time()
        self.registry = registry
        self.redis: AnyRedis | None = None
        self.bound_port: int | None = None
        self.on_reload: Callable[[], None] | None = None
        self._app = app
        self._uvicorn_options = uvicorn_options or {}
        self._workers: list[tuple[str, Worker]] = []
        self._ready_checks: dict[str, ReadyCheck] = {}
        self._status_fns: list[StatusFn] = []
        self._signals = 0
        configure_logging(
            settings.log_format, settings.log_level, service=self.name, instance=self.instance
        )
        self.log = get_logger(self.name)
        # OpenTelemetry when the OTEL_* variables ask for it, else no-op (bridge_common.tracing)
        tracing.configure(self.name, self.instance, settings.otel_env())

    # -- registration -------------------------------------------------------------------
    def add_worker(self, name: str, fn: Worker) -> None:
        """`fn(stop)` runs until it returns or `stop` is set; it should return promptly then."""
        self._workers.append((name, fn))

    def add_ready_check(self, name: str, fn: ReadyCheck) -> None:
        """`fn()` raises (or times out) when the dependency does not answer."""
        self._ready_checks[name] = fn

    def add_status(self, fn: StatusFn) -> None:
        """`fn()` adds facts (connections, lag, …) to every heartbeat."""
        self._status_fns.append(fn)

    def use_redis(self, client: AnyRedis, *, ready_check: bool = True) -> None:
        """Heartbeats go to this client; it is also checked by `/readyz`."""
        self.redis = client
        if ready_check:

            async def redis_ready() -> None:
                await asyncio.wait_for(client.ping(), 2.0)
                await asyncio.wait_for(require_redis_version(client), 2.0)

            self.add_ready_check("redis", redis_ready)

    # -- HTTP ---------------------------------------------------------------------------
    def health_routes(self) -> list[BaseRoute]:
        """`/healthz`, `/readyz`, `/metrics`; a service's own app includes these."""
        return [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "service": self.name,
                "instance": self.instance,
                "uptime_seconds": round(time.time() - self.started_at, 3),
            }
        )

    async def readiness(self) -> dict[str, str]:
        """Run every readiness check at once; map name → "ok" or the error."""

        async def one(fn: ReadyCheck) -> str:
            try:
                await asyncio.wait_for(fn(), 3.0)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                return f"{type(exc).__name__}: {exc}".strip()
            return "ok"

        names = list(self._ready_checks)
        results = await asyncio.gather(*(one(self._ready_checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def _readyz(self, request: Request) -> Response:
        checks = await self.readiness()
        ok = all(v == "ok" for v in checks.values()) and not self.stop.is_set()
        body: dict[str, object] = {"status": "ready" if ok else "unavailable", "checks": checks}
        if self.stop.is_set():
            body["stopping"] = True
        return JSONResponse(body, status_code=200 if ok else 503)

    async def _metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def _build_app(self) -> Starlette:
        if self._app is None:
            return Starlette(routes=self.health_routes())
        return self._app

    # -- heartbeat ----------------------------------------------------------------------
    def heartbeat(self) -> Heartbeat:
        status: dict[str, Any] = {}
        for fn in self._status_fns:
            try:
                status.update(fn())
            except Exception as exc:  # noqa: BLE001 - a status bug must not stop heartbeats
                self.log.warning("heartbeat.status_failed", error=repr(exc))
        if self.bound_port is not None:
            status.setdefault("port", self.bound_port)
        return Heartbeat(
            service=self.name,
            instance=self.instance,
            ts=time.time(),
            started_at=self.started_at,
            interval=self.settings.heartbeat_interval,
            status=status,
        )

    async def _heartbeat_loop(self, stop: asyncio.Event) -> None:
        assert self.redis is not None
        field = f"{self.name}/{self.instance}"
        # crashed instances never remove their entry: every instance sweeps now and then
        # (see bridge_common.liveness), so the list heals without the metrics API running
        expiry = self.settings.heartbeat_expiry
        sweep_every = max(self.settings.heartbeat_interval, expiry / 10)
        next_sweep = 0.0
        while not stop.is_set():
            try:
                payload = dumps(self.heartbeat())
                await self.redis.hset(self.channels.services, field, payload)
                await self.redis.publish(self.channels.heartbeats, payload)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + sweep_every
                    removed = await liveness.prune(self.redis, self.channels.services, expiry)
                    if removed:
                        self.log.info("heartbeat.expired_removed", count=removed)
            except Exception as exc:  # noqa: BLE001 - Redis down: keep trying
                self.log.warning("heartbeat.failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.heartbeat_interval)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.redis.hdel(self.channels.services, field), 1.0)

    # -- signals ------------------------------------------------------------------------
    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1 and sig == signal.SIGINT:
            self.log.warning("service.forced_exit", signal=sig.name)
            os._exit(130)
        self.log.info("service.stopping", signal=sig.name)
        self.stop.set()

    def _on_hup(self) -> None:
        if self.on_reload is not None:
            self.log.info("service.reload")
            self.on_reload()

    # -- run ----------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until a signal or a worker failure; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        limits = HttpLimits(
            max_header_bytes=self.settings.http_max_header_bytes,
            header_timeout=self.settings.http_header_timeout,
            max_pending=self.settings.http_max_pending,
            max_pending_per_ip=self.settings.http_max_pending_per_ip,
        )
        options: dict[str, Any] = {
            "http": guarded_protocol(limits),
            "log_config": None,
            "access_log": False,
            "lifespan": "on" if self._app is not None else "off",
            "timeout_graceful_shutdown": self.settings.shutdown_timeout,
            "ws_per_message_deflate": False,
        }
        options.update(self._uvicorn_options)
        config = uvicorn.Config(
            self._build_app(), host=self.settings.host, port=self.settings.port, **options
        )
        server = _Server(config)
        exit_code = 0
        failed: list[str] = []

        async def guarded(name: str, fn: Worker) -> None:
            try:
                await fn(self.stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("service.worker_failed", worker=name)
                failed.append(name)
                self.stop.set()

        async def serve() -> None:
            try:
                await server.serve(sockets=self._sockets)
            finally:
                if not server.started:
                    failed.append("http")
                    self.stop.set()

        try:
            async with asyncio.TaskGroup() as tg:
                http_task = tg.create_task(serve(), name="http")
                # uvicorn exposes readiness only as a flag
                while not server.started and not http_task.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                if server.started:
                    self.bound_port = server.servers[0].sockets[0].getsockname()[1]
                    self.log.info("service.started", port=self.bound_port, host=self.settings.host)
                worker_tasks = [tg.create_task(guarded(n, fn), name=n) for n, fn in self._workers]
                hb_task = None
                if self.redis is not None:
                    hb_task = tg.create_task(self._heartbeat_loop(self.stop), name="heartbeat")
                await self.stop.wait()
                # 1. stop accepting (uvicorn closes its listener, drains requests)
                server.should_exit = True
                # 2. let workers finish what they hold, until the deadline
                pending = [t for t in worker_tasks if not t.done()]
                if pending:
                    _, still = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)
                    # 3. cancel with a reason what did not finish in time
                    for t in still:
                        self.log.warning("service.worker_cancelled", worker=t.get_name())
                        t.cancel("shutdown deadline")
                if hb_task is not None:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(hb_task), 2.0)
                    hb_task.cancel("shutdown")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await tracing.shutdown()
        if failed:
            self.log.error("service.failed", failed=failed)
            exit_code = 1
        self.log.info("service.stopped", exit_code=exit_code)
        return exit_code


def run_main(main: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Run a service's async main on uvloop (when installed) and exit with its code."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        code = runner.run(main())
    sys.exit(code)
