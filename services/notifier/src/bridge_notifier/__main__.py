"""Command line of the notifier service: `bridge-notifier [--port N]`."""

from __future__ import annotations

import argparse

from bridge_common import db
from bridge_common.service import Service, redis_client, run_main
from bridge_common.settings import load_settings

from .metrics import RelayMetrics
from .relay import Relay
from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bridge-notifier",
        description="Relay committed row changes from the PostgreSQL outbox to Redis.",
    )
    parser.add_argument("--port", type=int, help="health/metrics port (BRIDGE_NOTIFIER_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings(Settings, port=args.port)

    async def run() -> int:
        svc = Service(settings)
        metrics = RelayMetrics(
            svc.registry, stats_stale_after=max(10.0, 5 * settings.stats_interval)
        )
        async with redis_client(settings) as redis:
            svc.use_redis(redis)
            relay = Relay(settings, redis, metrics)
            svc.add_worker("relay", relay.run)
            svc.add_ready_check("postgres", lambda: db.ping(settings.source_dsn))
            svc.add_status(metrics.status)
            return await svc.run()

    run_main(run)


if __name__ == "__main__":
    main()
