"""Per-test reset of the module's database and namespace, and the worker's environment.
Every module runs on both storage paths: plain PostgreSQL, and TimescaleDB where
`BRIDGE_TEST_TIMESCALE_DSN` names a server (tests/support/timescale.py)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import redis
from bridge_common.channels import Channels
from bridge_etl.target import ROLLUP_RELATIONS

from tests.support.timescale import STORAGES


@pytest.fixture(scope="module", params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def etl_env(bridge_env: dict[str, str]) -> dict[str, str]:
    """Worker settings tuned for tests: short polls, quick claims."""
    return {
        **bridge_env,
        "BRIDGE_ETL_POLL_INTERVAL": "0.2",
        "BRIDGE_ETL_SETTLE_GRACE": "0.2",
        "BRIDGE_ETL_CLAIM_IDLE": "1",
        "BRIDGE_ETL_CLAIM_INTERVAL": "0.5",
        "BRIDGE_SHUTDOWN_TIMEOUT": "5",
    }


@pytest.fixture
def clean(migrated_dsn: str, redis_url: str, namespace: str, storage: str) -> Iterator[str]:
    """An empty source and target, an empty stream and dead-letter stream; yields the DSN."""
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        if storage == "plain":
            conn.execute(
                "TRUNCATE audit_logs, bridge.outbox, audit_logs_ts, audit_logs_1m,"
                " bridge.etl_state, bridge.etl_rejects RESTART IDENTITY"
            )
        else:
            conn.execute(
                "TRUNCATE audit_logs, bridge.outbox, audit_logs_ts,"
                " bridge.etl_state, bridge.etl_rejects RESTART IDENTITY"
            )
            # the continuous aggregates forget what they materialised of the old rows
            # (bottom up: hours are built on minutes, days on hours)
            for relation in ROLLUP_RELATIONS:
                conn.execute(
                    "CALL refresh_continuous_aggregate(%s, NULL, NULL)", (relation,), prepare=False
                )
    ch = Channels(namespace)
    client = redis.Redis.from_url(redis_url)
    client.delete(ch.stream("audit_logs"), ch.dedupe("audit_logs"), ch.etl_dead_letter)
    client.close()
    yield migrated_dsn
