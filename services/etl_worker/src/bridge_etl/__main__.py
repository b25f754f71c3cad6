"""Command line of the ETL worker.

bridge-etl [--mode polling|event|hybrid] [--batch-size N] [--once] [--port P]
bridge-etl backfill --since ISO-TIME [--until ISO-TIME] [--batch-size N]
"""

from __future__ import annotations

import argparse
from datetime import datetime

from bridge_common.service import run_main
from bridge_common.settings import fail_config, load_settings

from .app import Job, run
from .settings import Settings


def _time(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from None
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no time zone (add Z or +00:00)")
    return ts


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--batch-size", type=int, help="rows per batch (BRIDGE_ETL_BATCH_SIZE)")
    common.add_argument("--port", type=int, help="listen port (BRIDGE_ETL_PORT)")
    p = argparse.ArgumentParser(
        prog="bridge-etl",
        parents=[common],
        description="Copy audit logs into the time-series store (TimescaleDB or partitioned"
        " PostgreSQL).",
    )
    p.add_argument(
        "--mode",
        choices=["polling", "event", "hybrid"],
        help="where rows come from (BRIDGE_ETL_MODE, default hybrid)",
    )
    p.add_argument("--once", action="store_true", help="drain what is there, then exit 0")
    sub = p.add_subparsers(dest="command")
    b = sub.add_parser(
        "backfill", parents=[common], help="load the source rows created since a time, then exit"
    )
    b.add_argument("--since", type=_time, required=True, help="ISO 8601 time with zone")
    b.add_argument("--until", type=_time, help="ISO 8601 time with zone (default: no end)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.batch_size is not None and not 1 <= args.batch_size <= 50_000:
        fail_config("etl: invalid configuration: --batch-size: must be between 1 and 50000")
    settings = load_settings(Settings, port=args.port, mode=args.mode, batch_size=args.batch_size)
    if args.command == "backfill":
        if args.until is not None and args.until <= args.since:
            fail_config("etl: invalid configuration: --until must be after --since")
        job = Job(backfill_since=args.since, backfill_until=args.until)
    else:
        job = Job(once=args.once)

    async def go() -> int:
        return await run(settings, job)

    run_main(go)


if __name__ == "__main__":
    main()
