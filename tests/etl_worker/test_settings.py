"""The ETL worker's retention settings stay outside the continuous aggregate's 2-day
refresh window (bad value: exit 2 with one line naming the variable)."""

from __future__ import annotations

import pytest
from bridge_common.settings import load_settings
from bridge_etl.settings import Settings


@pytest.mark.parametrize("name", ["BRIDGE_ETL_RETENTION_DAYS", "BRIDGE_ETL_ROLLUP_RETENTION_DAYS"])
@pytest.mark.parametrize("value", ["1", "2"])
def test_retention_inside_the_refresh_window_is_refused(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exc:
        load_settings(Settings)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and "greater than or equal to 3" in err


def test_three_days_and_the_defaults_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRIDGE_ETL_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("BRIDGE_ETL_ROLLUP_RETENTION_DAYS", raising=False)
    s = load_settings(Settings)
    assert (s.retention_days, s.rollup_retention_days) == (90, 400)
    monkeypatch.setenv("BRIDGE_ETL_RETENTION_DAYS", "3")
    monkeypatch.setenv("BRIDGE_ETL_ROLLUP_RETENTION_DAYS", "3")
    s = load_settings(Settings)
    assert (s.retention_days, s.rollup_retention_days) == (3, 3)
