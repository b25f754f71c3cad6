"""Settings of the ETL worker (`BRIDGE_ETL_*`), validated once at start-up."""

from __future__ import annotations

from typing import Literal

from bridge_common.settings import BridgeSettings
from pydantic import Field

Mode = Literal["polling", "event", "hybrid"]


class Settings(BridgeSettings):
    service_name = "etl"
    default_port = 9102

    #: polling reads the source table, event the `audit_logs` stream, hybrid both
    mode: Mode = Field(default="hybrid", validation_alias="BRIDGE_ETL_MODE")
    #: rows per load transaction. The original service moved 10 rows a batch; 1000 keeps a
    #: batch well under a second on a small machine while amortising the per-transaction cost.
    batch_size: int = Field(default=1000, ge=1, le=50_000, validation_alias="BRIDGE_ETL_BATCH_SIZE")
    #: seconds between polls of the source table when it had nothing new
    poll_interval: float = Field(
        default=1.0, gt=0, le=300, validation_alias="BRIDGE_ETL_POLL_INTERVAL"
    )
    #: a gap in source ids is re-checked once every transaction that was running at least
    #: this long after the gap was seen has ended (see polling.py)
    settle_grace: float = Field(
        default=1.0, ge=0, le=300, validation_alias="BRIDGE_ETL_SETTLE_GRACE"
    )
    #: stream entries pending this long on another consumer are claimed (XAUTOCLAIM)
    claim_idle: float = Field(
        default=30.0, gt=0, le=86_400, validation_alias="BRIDGE_ETL_CLAIM_IDLE"
    )
    claim_interval: float = Field(
        default=5.0, gt=0, le=3600, validation_alias="BRIDGE_ETL_CLAIM_INTERVAL"
    )
    #: a stream entry delivered this many times without being loaded is dead-lettered
    max_deliveries: int = Field(
        default=5, ge=1, le=1000, validation_alias="BRIDGE_ETL_MAX_DELIVERIES"
    )
    #: event mode: seconds between reconciliations from the source table (repairs after a
    #: detected stream loss run at once); 0 = only on a detected loss
    repair_interval: float = Field(
        default=300.0, ge=0, le=86_400, validation_alias="BRIDGE_ETL_REPAIR_INTERVAL"
    )
    #: raw rows are kept this many days (partitions dropped / Timescale retention policy).
    #: At least 3: the continuous aggregate's policy re-reads the last 2 days, and dropping
    #: raw rows inside that window would erase their counts from the aggregate too.
    retention_days: int = Field(
        default=90, ge=3, le=36_500, validation_alias="BRIDGE_ETL_RETENTION_DAYS"
    )
    #: per-minute rollup rows are kept this many days (plain: rows deleted; Timescale: the
    #: continuous aggregate's retention policy is set to it at start-up). At least 3, as above.
    rollup_retention_days: int = Field(
        default=400, ge=3, le=36_500, validation_alias="BRIDGE_ETL_ROLLUP_RETENTION_DAYS"
    )
    #: daily partitions created ahead of today (plain PostgreSQL path)
    partitions_ahead: int = Field(
        default=3, ge=1, le=366, validation_alias="BRIDGE_ETL_PARTITIONS_AHEAD"
    )
    #: seconds between partition/retention maintenance runs
    maintenance_interval: float = Field(
        default=3600.0, gt=0, le=86_400, validation_alias="BRIDGE_ETL_MAINTENANCE_INTERVAL"
    )
    #: bound of the dead-letter stream (entries, approximate)
    dead_letter_maxlen: int = Field(
        default=100_000, ge=100, le=10_000_000, validation_alias="BRIDGE_ETL_DEAD_LETTER_MAXLEN"
    )
