"""TimescaleDB background jobs of the target (Timescale path): the aggregate's refresh
policy, compression and retention, read from `timescaledb_information.job_stats`.

These jobs run inside the database, out of the worker's sight: when one fails (a bad
TimescaleDB/PostgreSQL pair can fail every run), the aggregate stops being materialised
and chunks stop being compressed or dropped, with no error anywhere else. The worker polls
their state and publishes it as Prometheus gauges and in its heartbeat, from which the
metrics API publishes `etl.timescale_jobs_failing` for alert rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from .target import ROLLUP_RELATIONS

#: seconds between two reads of the job state
POLL_INTERVAL = 60.0
#: TimescaleDB's own jobs (telemetry, …) have ids below 1000; policies start at 1000
FIRST_POLICY_JOB = 1000
#: the relations whose policies are ours (`audit_logs_ts` and its aggregates); other
#: applications' jobs in a shared target database are theirs to watch
OUR_RELATIONS = ["audit_logs_ts", *ROLLUP_RELATIONS]

_JOBS = """
SELECT j.job_id, j.proc_name::text,
       coalesce(ca.view_name, j.hypertable_name)::text,
       s.last_run_status::text, s.job_status::text,
       coalesce(s.total_runs, 0), coalesce(s.total_failures, 0),
       -- a job that never succeeded reads -infinity here, which has no Python datetime
       CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END,
       CASE WHEN isfinite(s.next_start) THEN s.next_start END
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
LEFT JOIN timescaledb_information.continuous_aggregates ca
       ON ca.materialization_hypertable_schema = j.hypertable_schema
      AND ca.materialization_hypertable_name = j.hypertable_name
WHERE j.job_id >= %s AND coalesce(ca.view_name, j.hypertable_name)::text = ANY(%s)
ORDER BY j.job_id
"""


@dataclass(frozen=True, slots=True)
class JobState:
    job_id: int
    proc_name: str  # policy_refresh_continuous_aggregate, policy_compression, …
    relation: str  # audit_logs_ts or a rollup aggregate (the view, not its hypertable)
    last_run_status: str | None  # Success | Failed | None (never ran)
    job_status: str | None  # Scheduled | Running | Paused
    total_runs: int
    total_failures: int
    last_successful_finish: datetime | None
    next_start: datetime | None

    @property
    def failing(self) -> bool:
        """Its last run failed (it is retried with backoff until one succeeds)."""
        return self.last_run_status == "Failed"

    @property
    def label(self) -> str:
        return f"{self.proc_name}[{self.job_id}] on {self.relation}"


async def read_jobs(conn: psycopg.AsyncConnection[Any]) -> list[JobState]:
    """The policy jobs on Bridge Lite's relations and how their runs went."""
    cur = await conn.execute(_JOBS, (FIRST_POLICY_JOB, OUR_RELATIONS), prepare=False)
    return [
        JobState(
            job_id=int(r[0]),
            proc_name=str(r[1]),
            relation=str(r[2] or ""),
            last_run_status=r[3],
            job_status=r[4],
            total_runs=int(r[5]),
            total_failures=int(r[6]),
            last_successful_finish=r[7],
            next_start=r[8],
        )
        for r in await cur.fetchall()
    ]
