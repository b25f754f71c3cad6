"""Command line of the ETL worker.

bridge-etl [--mode polling|event|hybrid] [--batch-size N] [--once] [--port P]
bridge-etl [--batch-size N] backfill --since ISO-TIME [--until ISO-TIME] [--batch-size N]

One-off runs (`--once`, `backfill`) run beside the long-lived workers, which hold
`BRIDGE_ETL_PORT`: they listen on an ephemeral port (logged in `service.started`) unless
`--port` names one. `--batch-size`/`--port` may stand before or after `backfill`; options
that mean nothing to a backfill (`--mode`, `--once`) are refused, never dropped.
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


def _common(suppress: bool) -> argparse.ArgumentParser:
    # after the subcommand the defaults are SUPPRESS: an option given before it survives
    default = argparse.SUPPRESS if suppress else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--batch-size", type=int, default=default, help="rows per batch (BRIDGE_ETL_BATCH_SIZE)"
    )
    common.add_argument(
        "--port",
        type=int,
        default=default,
        help="listen port (BRIDGE_ETL_PORT; one-off runs: an ephemeral port unless given)",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bridge-etl",
        parents=[_common(suppress=False)],
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
        "backfill",
        parents=[_common(suppress=True)],
        help="load the source rows created since a time, then exit",
    )
    b.add_argument("--since", type=_time, required=True, help="ISO 8601 time with zone")
    b.add_argument("--until", type=_time, help="ISO 8601 time with zone (default: no end)")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "backfill" and (args.mode is not None or args.once):
        parser.error("--mode and --once do not apply to backfill (it reads the source table)")
    if args.batch_size is not None and not 1 <= args.batch_size <= 50_000:
        fail_config("etl: invalid configuration: --batch-size: must be between 1 and 50000")
    port = args.port
    if port is None and (args.once or args.command == "backfill"):
        port = 0  # beside a running worker, which holds BRIDGE_ETL_PORT
    settings = load_settings(Settings, port=port, mode=args.mode, batch_size=args.batch_size)
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
