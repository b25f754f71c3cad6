"""Fixtures for tests that run several parts of the suite together: a private local Redis
Cluster (3 primaries) shared by the session; see `tests/support/cluster.py`."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalRedisCluster, redis_cluster


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalRedisCluster]:
    """3 primaries on free loopback ports, AOF on (a restarted primary keeps its data)."""
    with tempfile.TemporaryDirectory(prefix="bridge-cluster-") as tmp:
        with redis_cluster(Path(tmp), 3, appendonly=True) as cluster:
            yield cluster
