"""Command line of the etl service."""

from __future__ import annotations

import argparse

from bridge_common.service import Service, redis_client, run_main
from bridge_common.settings import load_settings

from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bridge-etl")
    parser.add_argument("--port", type=int, help="listen port (BRIDGE_ETL_PORT)")
    args = parser.parse_args(argv)
    settings = load_settings(Settings, port=args.port)

    async def run() -> int:
        svc = Service(settings)
        async with redis_client(settings) as redis:
            svc.use_redis(redis)
            return await svc.run()

    run_main(run)


if __name__ == "__main__":
    main()
