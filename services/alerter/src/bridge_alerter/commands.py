"""The `check`, `test-notify` and `silence` subcommands."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
from bridge_common.channels import Channels
from bridge_common.events import AlertNotice
from bridge_common.service import redis_client

from .durations import format_duration, parse_duration
from .errors import DeliveryError, RulesError
from .notify import send
from .rules import load_rules
from .settings import Settings
from .silences import SilenceStore
from .state import iso
from .store import new_delivery_id


def check(path: str) -> int:
    """Validate a rules file: every problem on its own line, exit 1 if there is any."""
    try:
        ruleset = load_rules(path)
    except RulesError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        print(f"{len(exc.problems)} error(s) in {path}", file=sys.stderr)
        return 1
    for warning in ruleset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: OK ({len(ruleset.rules)} rules, {len(ruleset.channels)} channels)")
    return 0


def test_notify(settings: Settings, path: str, channel_name: str, attempts: int = 3) -> int:
    """Send a test message to one channel now; exit 0 when it was accepted."""
    try:
        ruleset = load_rules(path)
    except RulesError as exc:
        print(f"alerter: invalid rules file: {exc.one_line()}", file=sys.stderr)
        return 2
    channel = ruleset.channels.get(channel_name)
    if channel is None:
        known = ", ".join(sorted(ruleset.channels)) or "none"
        print(f"unknown channel {channel_name!r} (channels: {known})", file=sys.stderr)
        return 2
    notice = AlertNotice(
        rule="bridge_alerter_test",
        state="firing",
        severity="info",
        value=None,
        threshold=0.0,
        summary=f"Test notification from bridge-alerter to channel {channel_name}",
        started_at=iso(time.time()) or "",
        fingerprint="test",
    )

    # a real id, the same on every attempt: receivers dedupe test messages like others
    delivery_id = new_delivery_id()

    async def go() -> int:
        async with httpx.AsyncClient() as http:
            for attempt in range(1, attempts + 1):
                try:
                    await send(
                        http,
                        channel,
                        notice,
                        kind="test",
                        delivery_id=delivery_id,
                        call_timeout=settings.http_timeout,
                        allowed=settings.allowed,
                    )
                except DeliveryError as exc:
                    print(f"attempt {attempt}: {exc}", file=sys.stderr)
                    if not exc.retry or attempt == attempts:
                        return 1
                    await asyncio.sleep(min(exc.retry_after or attempt, 10.0))
                    continue
                print(f"sent a test message to {channel_name} ({channel.type}), id {delivery_id}")
                return 0
        return 1

    try:
        return asyncio.run(go())
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        print(f"test-notify failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def silence(settings: Settings, action: str, **opts: object) -> int:
    async def go() -> int:
        async with redis_client(settings) as client:
            store = SilenceStore(client, Channels(settings.namespace))
            if action == "add":
                _warn_unknown_rule(settings.alert_rules, str(opts["rule"]))
                seconds = parse_duration(opts["duration"])
                if seconds <= 0:
                    raise ValueError("--for must be greater than zero")
                s = await store.add(
                    str(opts["rule"]),
                    seconds,
                    str(opts.get("comment") or ""),
                    str(opts.get("author") or ""),
                )
                print(s.id)
                print(
                    f"silenced rule {s.rule} until {iso(s.ends_at)} ({format_duration(seconds)})",
                    file=sys.stderr,
                )
                return 0
            if action == "list":
                now = time.time()
                rows = [s for s in await store.all() if opts.get("all") or s.active(now)]
                print(f"{'ID':<13} {'RULE':<30} {'STATE':<8} {'ENDS_AT':<28} COMMENT")
                for s in rows:
                    state = "active" if s.active(now) else "expired"
                    ends = iso(s.ends_at) or ""
                    print(f"{s.id:<13} {s.rule:<30} {state:<8} {ends:<28} {s.comment}")
                return 0
            expired = await store.expire(str(opts["id"]))
            if expired is None:
                print(f"no silence with id {opts['id']!r}", file=sys.stderr)
                return 1
            print(f"expired silence {expired.id} of rule {expired.rule}")
            return 0

    try:
        return asyncio.run(go())
    except ValueError as exc:
        print(f"alerter: {exc}", file=sys.stderr)
        return 2


def _warn_unknown_rule(path: str, rule: str) -> None:
    """Silencing a rule the local rules file does not have is allowed, but likely a typo."""
    try:
        ruleset = load_rules(path)
    except RulesError:
        return
    if ruleset.rule(rule) is None:
        names = ", ".join(r.name for r in ruleset.rules)
        print(f"warning: {path} has no rule {rule!r} (rules: {names})", file=sys.stderr)
