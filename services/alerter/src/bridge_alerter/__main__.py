"""Command line of the alerter: run the service, or `check`, `test-notify`, `silence`."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from bridge_common.service import run_main
from bridge_common.settings import fail_config, load_settings

from . import commands
from .errors import RulesError
from .rules import load_rules
from .settings import Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge-alerter",
        description="Evaluate alert rules over the metrics snapshot and notify Slack/webhooks. "
        "Without a subcommand, runs the service.",
    )
    parser.add_argument("--port", type=int, help="listen port (BRIDGE_ALERTER_PORT)")
    parser.add_argument("--rules", help="rules file (BRIDGE_ALERT_RULES, default alerts.yaml)")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("check", help="validate a rules file; every error with its line")
    p.add_argument("path", nargs="?", help="rules file (default: --rules / BRIDGE_ALERT_RULES)")
    p = sub.add_parser("test-notify", help="send a test message to one channel")
    p.add_argument("--channel", required=True, help="channel name from the rules file")
    p = sub.add_parser("silence", help="mute a rule's notifications for a while")
    ssub = p.add_subparsers(dest="action", required=True)
    a = ssub.add_parser("add", help="silence a rule")
    a.add_argument("--rule", required=True)
    a.add_argument("--for", dest="duration", required=True, help="e.g. 30m, 2h, 1d")
    a.add_argument("--comment", default="")
    a.add_argument("--author", default=None, help="who (default: the current user)")
    lst = ssub.add_parser("list", help="active silences")
    lst.add_argument("--all", action="store_true", help="include expired silences")
    e = ssub.add_parser("expire", help="end a silence now")
    e.add_argument("id")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        path = args.path or args.rules or os.environ.get("BRIDGE_ALERT_RULES") or "alerts.yaml"
        sys.exit(commands.check(path))
    settings = load_settings(Settings, port=args.port, alert_rules=args.rules)
    if args.command == "test-notify":
        sys.exit(commands.test_notify(settings, settings.alert_rules, args.channel))
    if args.command == "silence":
        author = args.author if getattr(args, "author", None) else _user()
        sys.exit(
            commands.silence(
                settings,
                args.action,
                rule=getattr(args, "rule", None),
                duration=getattr(args, "duration", None),
                comment=getattr(args, "comment", ""),
                author=author,
                all=getattr(args, "all", False),
                id=getattr(args, "id", None),
            )
        )
    try:
        ruleset = load_rules(settings.alert_rules)
    except RulesError as exc:
        fail_config(f"alerter: invalid rules file: {exc.one_line()}")

    from .app import serve

    async def run() -> int:
        return await serve(settings, settings.alert_rules, ruleset)

    run_main(run)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


if __name__ == "__main__":
    main()
