"""Command line of the gateway service: `bridge-gateway [--port N]` (one process, or a
supervisor of `BRIDGE_GATEWAY_WORKERS` worker processes on that port — `workers.py`)."""

from __future__ import annotations

import argparse

from bridge_common.service import Service, redis_client, run_main
from bridge_common.settings import fail_config, load_settings

from .app import build_app
from .archive import open_archive
from .gateway import Gateway
from .settings import Settings
from .snapshot import open_snapshots
from .streaming import http_limits, streaming_protocol
from .workers import Supervisor, reuse_port_socket, watch_supervisor
from .ws_protocol import GatewayWebSocketProtocol


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bridge-gateway", description="WebSocket + SSE fan-out from Redis to clients"
    )
    parser.add_argument("--port", type=int, help="listen port (BRIDGE_GATEWAY_PORT)")
    # a worker started by the supervisor (BRIDGE_GATEWAY_WORKERS > 1): see workers.py
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = load_settings(Settings, port=args.port)
    if settings.auth == "jwt" and (
        settings.jwt_secret is None or not settings.jwt_secret.get_secret_value()
    ):
        fail_config(
            "gateway: BRIDGE_JWT_SECRET is not set "
            "(set it, or BRIDGE_AUTH=disabled to accept clients without tokens)"
        )

    if settings.workers > 1 and not args.reuse_port:
        run_main(Supervisor(settings).run)
        return
    sockets = [reuse_port_socket(settings.host, settings.port)] if args.reuse_port else None

    async def run() -> int:
        async with (
            redis_client(settings) as redis,
            # the live connection reconnects itself (to fill gaps), so no hidden retries
            redis_client(settings, socket_timeout=None, retries=0) as live,
            open_archive(
                settings.effective_history_dsn,
                max_size=settings.history_pool,
                batch=settings.replay_batch,
            ) as archive,
            open_snapshots(
                settings.snapshot_dsn,
                concurrency=settings.snapshot_concurrency,
                statement_timeout=settings.snapshot_timeout,
            ) as snapshots,
        ):
            gateway = Gateway(settings, redis, live, archive, snapshots)
            app = build_app(gateway)
            svc = Service(
                settings,
                app=app,
                uvicorn_options={
                    # SSE write-through (`streaming.py`) on top of the common HTTP limits
                    "http": streaming_protocol(http_limits(settings)),
                    "ws": GatewayWebSocketProtocol,
                    "ws_max_size": settings.max_frame_bytes,
                    "ws_ping_interval": settings.ping_interval,
                    "ws_ping_timeout": settings.ping_timeout,
                    "ws_per_message_deflate": False,
                    "backlog": 4096,
                },
                sockets=sockets,
            )
            gateway.presence.bind(svc.instance)
            app.router.routes.extend(svc.health_routes())
            svc.use_redis(redis)

            async def live_ready() -> None:
                if not gateway.hub.connected.is_set():
                    raise ConnectionError("live Redis subscription is down")

            svc.add_ready_check("live", live_ready)
            svc.add_status(gateway.status)
            svc.add_worker("gateway", gateway.run)
            if args.reuse_port:
                svc.add_worker("supervisor", lambda _: watch_supervisor(svc.stop))
            return await svc.run()

    run_main(run)


if __name__ == "__main__":
    main()
