"""`bridge-metrics-api`: the ops HTTP API, the dashboard page and the snapshot publisher."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

from bridge_common.channels import Channels
from bridge_common.db import open_pool, ping
from bridge_common.service import Service, redis_client, run_main
from bridge_common.settings import fail_config, load_settings
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from .app import add_routes, create_app, ops_auth
from .overview import Sources, collect, snapshot_metrics
from .settings import Settings
from .snapshot import SnapshotPublisher

Pool = AsyncConnectionPool


def _with_timeout(dsn: str, seconds: float) -> str:
    """The server cancels a statement that outlives the query timeout (plus a margin)."""
    return make_conninfo(dsn, options=f"-c statement_timeout={int(seconds * 1000) + 500}")


@contextlib.asynccontextmanager
async def _pools(
    settings: Settings,
) -> AsyncIterator[tuple[AsyncConnectionPool, AsyncConnectionPool]]:
    """Source and target pools; one pool when both DSNs name the same database."""
    source = _with_timeout(settings.source_dsn, settings.query_timeout)
    target = _with_timeout(settings.effective_target_dsn, settings.query_timeout)
    size = settings.db_pool_size
    async with open_pool(source, max_size=size, name="source") as sp:
        if settings.effective_target_dsn == settings.source_dsn:
            yield sp, sp
            return
        async with open_pool(target, max_size=size, name="target") as tp:
            yield sp, tp


async def serve(settings: Settings) -> int:
    auth = ops_auth(settings)
    app = create_app(auth)
    # X-Forwarded-* are believed only from the proxies named in the settings
    proxy = (
        {"proxy_headers": True, "forwarded_allow_ips": settings.proxies}
        if settings.proxies
        else {"proxy_headers": False}
    )
    svc = Service(settings, app=app, uvicorn_options=proxy)
    async with _pools(settings) as (source_pool, target_pool), redis_client(settings) as redis:
        sources = Sources(
            source_pool=source_pool,
            target_pool=target_pool,
            redis=redis,
            channels=Channels(settings.namespace),
            query_timeout=settings.query_timeout,
            heartbeat_expiry=settings.heartbeat_expiry,
        )
        add_routes(app, settings, sources, svc, auth)
        svc.use_redis(redis)
        svc.add_ready_check("source_db", lambda: ping(source_pool))
        if target_pool is not source_pool:
            svc.add_ready_check("target_db", lambda: ping(target_pool))

        async def metrics() -> dict[str, float | None]:
            return snapshot_metrics(await collect(sources))

        publisher = SnapshotPublisher(
            redis,
            sources.channels,
            metrics,
            owner=svc.instance,
            interval=settings.snapshot_interval,
            maxlen=settings.snapshot_maxlen,
        )
        svc.add_worker("snapshot", publisher.run)
        svc.add_status(lambda: {"snapshot_leader": publisher.lease.held})
        code: int = await svc.run()
        return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bridge-metrics-api", description="Ops HTTP API, live dashboard, metrics snapshot"
    )
    parser.add_argument("--port", type=int, help="listen port (BRIDGE_METRICS_API_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings(Settings, port=args.port)
    if settings.metrics_auth == "jwt" and settings.jwt_keys is None:
        fail_config(
            "metrics_api: BRIDGE_JWT_SECRET is not set (set it, or BRIDGE_METRICS_AUTH=disabled "
            "to answer anyone who reaches the port)"
        )
    run_main(lambda: serve(settings))


if __name__ == "__main__":
    main()
