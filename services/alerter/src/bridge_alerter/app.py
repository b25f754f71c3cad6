"""The running alerter: rules in force, leadership, evaluation and delivery, composed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from bridge_common.logging import get_logger
from bridge_common.redis import EventPublisher
from bridge_common.service import Service, redis_client

from . import metrics
from .delivery import Dispatcher
from .errors import RulesError
from .evaluator import Evaluator
from .leader import Leadership
from .rules import RuleSet, load_rules
from .settings import Settings
from .silences import SilenceStore
from .store import AlertStore

log = get_logger("alerter")


class LiveRules:
    """The rule set in force; `reload()` swaps it only for a valid file (SIGHUP)."""

    def __init__(self, path: str, ruleset: RuleSet) -> None:
        self.path = path
        self.current = ruleset

    def __call__(self) -> RuleSet:
        return self.current

    def reload_in_place(self) -> None:
        self.reload()

    def reload(self) -> bool:
        try:
            ruleset = load_rules(self.path)
        except RulesError as exc:
            metrics.RELOADS.labels("invalid").inc()
            log.error(
                "rules.reload_rejected",
                path=self.path,
                errors=exc.lines(),
                kept_rules=len(self.current.rules),
            )
            return False
        self.current = ruleset
        metrics.RELOADS.labels("ok").inc()
        log.info(
            "rules.reloaded",
            path=self.path,
            rules=len(ruleset.rules),
            channels=len(ruleset.channels),
        )
        for warning in ruleset.warnings:
            log.warning("rules.warning", detail=warning)
        return True


async def serve(settings: Settings, rules_path: str, ruleset: RuleSet) -> int:
    svc = Service(settings)
    live = LiveRules(str(Path(rules_path)), ruleset)
    svc.log.info(
        "rules.loaded", path=rules_path, rules=len(ruleset.rules), channels=len(ruleset.channels)
    )
    for warning in ruleset.warnings:
        svc.log.warning("rules.warning", detail=warning)
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=10)
    async with (
        redis_client(settings) as redis,
        httpx.AsyncClient(timeout=settings.http_timeout, limits=limits) as http,
    ):
        svc.use_redis(redis)
        svc.on_reload = live.reload_in_place
        leadership = Leadership(
            redis, svc.channels.leader("alerter"), svc.instance, settings.lease_ttl
        )
        store = AlertStore(redis, svc.channels, svc.instance)
        dispatcher = Dispatcher(
            settings, store, leadership, live, http, EventPublisher(redis, svc.channels)
        )
        evaluator = Evaluator(
            settings,
            redis,
            svc.channels,
            store,
            SilenceStore(redis, svc.channels),
            leadership,
            dispatcher,
            live,
        )

        async def alerter(stop: asyncio.Event) -> None:
            # the lease is released only after evaluation and deliveries have stopped
            async with leadership, asyncio.TaskGroup() as tg:
                tg.create_task(evaluator.run(stop), name="evaluator")
                tg.create_task(dispatcher.run(stop), name="dispatcher")

        svc.add_worker("alerter", alerter)
        svc.add_status(
            lambda: {
                "leader": leadership.is_leader,
                "rules": len(live.current.rules),
                # only the leader's view is current
                "firing": sum(1 for s in evaluator.states.values() if s.state == "firing")
                if leadership.is_leader
                else None,
            }
        )
        return await svc.run()
