"""The ETL worker process: detect the target path, then run the chosen mode's loops and
the partition maintenance under one `Service` (health, heartbeat, ordered shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from bridge_common.db import Backoff, open_pool
from bridge_common.db import ping as db_ping
from bridge_common.redis import AnyRedis
from bridge_common.service import Service, redis_client
from psycopg_pool import AsyncConnectionPool

from .backfill import backfill
from .deadletter import DeadLetters
from .errors import TargetNotMigrated
from .jobs import POLL_INTERVAL as JOBS_POLL_INTERVAL
from .jobs import read_jobs
from .partitions import Partitions
from .polling import Poller
from .repair import Repair
from .settings import Settings
from .sink import Sink, Stopping
from .stats import EtlStats
from .stream import StreamConsumer
from .target import ROLLUP_RELATIONS, Path, detect_path, sync_timescale_retention

#: seconds between refreshes of the continuous aggregate over late rows (Timescale path)
REFRESH_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class Job:
    """What this process was asked to do."""

    once: bool = False
    backfill_since: datetime | None = None
    backfill_until: datetime | None = None


class EtlWorker:
    """One worker process's resources and loops."""

    def __init__(
        self,
        settings: Settings,
        job: Job,
        svc: Service,
        redis: AnyRedis,
        source: AsyncConnectionPool,
        target: AsyncConnectionPool,
    ) -> None:
        self.settings = settings
        self.job = job
        self.svc = svc
        self.redis = redis
        self.source = source
        self.target = target
        self.mode = "backfill" if job.backfill_since is not None else settings.mode
        self.stats = EtlStats(svc.registry, mode=self.mode)
        self.log = svc.log.bind(mode=self.mode)
        self.partitions = Partitions(
            target,
            retention_days=settings.retention_days,
            rollup_retention_days=settings.rollup_retention_days,
            ahead=settings.partitions_ahead,
        )
        self.dead_letters = DeadLetters(
            redis, svc.channels.etl_dead_letter, svc.instance, settings.dead_letter_maxlen
        )
        self.path: Path = "plain"

    async def detect(self, stop: asyncio.Event) -> Path:
        """The target's path, retrying while the target database is unreachable."""
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            try:
                async with self.target.connection() as conn:
                    path = await detect_path(conn)
                    await conn.commit()
                    if path == "timescale":
                        await self._sync_retention(conn)
                    return path
            except psycopg.OperationalError as exc:
                self.log.warning("target.unreachable", error=str(exc).strip())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff.next_delay())
                if stop.is_set():
                    raise Stopping from exc

    async def _sync_retention(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Timescale: the retention policies as the settings say (raw rows; every
        continuous aggregate, as the plain path prunes every rollup table)."""
        wanted = {"audit_logs_ts": self.settings.retention_days}
        wanted.update(dict.fromkeys(ROLLUP_RELATIONS, self.settings.rollup_retention_days))
        await conn.set_autocommit(True)
        try:
            for relation, days in wanted.items():
                try:
                    if await sync_timescale_retention(conn, days, relation):
                        self.log.info("timescale.retention_set", relation=relation, days=days)
                except psycopg.errors.InsufficientPrivilege as exc:
                    # the migration's policy stays; say so and go on
                    self.log.warning(
                        "timescale.retention_unchanged", relation=relation, error=str(exc)
                    )
        finally:
            await conn.set_autocommit(False)

    async def poll_jobs(self) -> None:
        """Timescale: read the background jobs' state into the metrics and heartbeat."""
        async with self.target.connection() as conn:
            found = await read_jobs(conn)
            await conn.rollback()
        self.stats.jobs(found, datetime.now(UTC))
        failing = [j.label for j in found if j.failing]
        if failing:
            self.log.warning("timescale.jobs_failing", jobs=failing)

    async def maintain(self) -> None:
        if self.path == "plain":
            created, dropped = await self.partitions.maintain()
            self.log.info("maintenance.done", created=len(created), dropped=len(dropped))
        else:
            await self.partitions.prune_rejects()

    async def _every(self, stop: asyncio.Event, seconds: float, what: str, fn: object) -> None:
        assert callable(fn)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
            if stop.is_set():
                return
            try:
                await fn()
            except (psycopg.Error, OSError) as exc:
                self.log.warning(f"{what}.failed", error=str(exc).strip())

    async def main(self, stop: asyncio.Event) -> None:
        """The service's one worker: detect, maintain, then run the mode until done."""
        try:
            self.path = await self.detect(stop)
        except Stopping:
            return
        except TargetNotMigrated as exc:
            self.log.error("etl.target_not_migrated", error=str(exc))
            raise
        self.stats.path = self.path
        self.log.info("etl.path", path=self.path, batch_size=self.settings.batch_size)
        await self.maintain()
        if self.path == "timescale":
            try:
                await self.poll_jobs()
            except psycopg.Error as exc:
                self.log.warning("timescale_jobs.failed", error=str(exc).strip())
        sink = Sink(self.target, self.path, self.dead_letters, self.stats, self.partitions)
        try:
            await self._run_mode(sink, stop)
        except Stopping:
            pass
        if self.path == "timescale":
            await sink.flush_refresh()
        if self.job.once or self.job.backfill_since is not None:
            self.log.info(
                "etl.drained",
                rows_total=self.stats.rows_total,
                dead_letters=self.stats.dead_letters_total,
            )
            stop.set()

    async def _run_mode(self, sink: Sink, stop: asyncio.Event) -> None:
        s, job = self.settings, self.job
        if job.backfill_since is not None:
            # same database: rows can go source → target inside the server
            same = s.target_dsn is None or s.target_dsn == s.source_dsn
            await backfill(
                self.source,
                sink,
                stop,
                since=job.backfill_since,
                until=job.backfill_until,
                batch_size=s.batch_size,
                same_database=same,
            )
            return
        async with asyncio.TaskGroup() as tg:
            if s.mode in ("polling", "hybrid"):
                poller = self._poller(sink, "polling")
                tg.create_task(poller.run(stop, once=job.once), name="polling")
            if s.mode in ("event", "hybrid"):
                if s.mode == "event":
                    repair = Repair(
                        self._poller(sink, "repair"), self.stats, interval=s.repair_interval
                    )
                    on_loss = repair.request
                else:
                    on_loss = self._loss_covered_by_polling
                consumer = StreamConsumer(
                    self.redis,
                    self.svc.channels,
                    self.svc.instance,
                    sink,
                    self.stats,
                    batch_size=s.batch_size,
                    claim_idle=s.claim_idle,
                    claim_interval=s.claim_interval,
                    max_deliveries=s.max_deliveries,
                    on_loss=on_loss,
                )
                if s.mode == "hybrid":
                    tg.create_task(consumer.run(stop, once=job.once), name="stream")
                elif job.once:
                    # drain the stream, then repair what it reported lost
                    tg.create_task(self._drain_then_repair(consumer, repair, stop), name="stream")
                else:
                    tg.create_task(consumer.run(stop), name="stream")
                    tg.create_task(repair.run(stop), name="repair")
            if not job.once:
                tg.create_task(
                    self._every(stop, s.maintenance_interval, "maintenance", self.maintain)
                )
                if self.path == "timescale":
                    tg.create_task(
                        self._every(stop, REFRESH_INTERVAL, "refresh", sink.flush_refresh)
                    )
                    tg.create_task(
                        self._every(stop, JOBS_POLL_INTERVAL, "timescale_jobs", self.poll_jobs)
                    )

    def _poller(self, sink: Sink, origin: str) -> Poller:
        s = self.settings
        return Poller(
            self.source,
            s.effective_target_dsn,
            sink,
            self.stats,
            batch_size=s.batch_size,
            poll_interval=s.poll_interval,
            settle_grace=s.settle_grace,
            origin=origin,
        )

    def _loss_covered_by_polling(self, reason: str) -> None:
        """Hybrid: the poller in this process already re-reads everything the stream lost."""
        self.stats.stream_loss(reason)
        self.log.info("stream.loss_covered", reason=reason, by="polling")

    @staticmethod
    async def _drain_then_repair(
        consumer: StreamConsumer, repair: Repair, stop: asyncio.Event
    ) -> None:
        await consumer.run(stop, once=True)
        await repair.run(stop, once=True)


async def run(settings: Settings, job: Job) -> int:
    svc = Service(settings)
    async with (
        redis_client(settings) as redis,
        open_pool(settings.effective_target_dsn, max_size=4, name="etl-target") as target,
        open_pool(settings.source_dsn, max_size=3, name="etl-source") as source,
    ):
        worker = EtlWorker(settings, job, svc, redis, source, target)
        svc.use_redis(redis)
        svc.add_status(worker.stats.status)
        svc.add_ready_check("target", lambda: db_ping(target))
        svc.add_ready_check("source", lambda: db_ping(source))
        svc.add_worker("etl", worker.main)
        return await svc.run()
