"""Every fault scenario of ``tests/fault_scenarios.py``, short: 0 errors seen by callers, 0
stale reads after settle, 0 write-behind writes lost silently."""

from __future__ import annotations

import pytest

from . import fault_scenarios


@pytest.mark.parametrize("name", list(fault_scenarios.SCENARIOS))
def test_fault_scenario_keeps_every_promise(name: str) -> None:
    row = fault_scenarios.SCENARIOS[name](2.0)
    assert row.calls > 100, row
    assert row.errors == 0, row.samples
    assert row.stale == 0, row
    assert row.lost_silently == 0, row
    if name == "evicting-refused":
        assert row.acknowledged == 0 and row.refused == row.calls  # refused before any write
    elif name in ("evicting-accepted", "evicting-own-queue", "flushall", "failover"):
        assert row.acknowledged > 100 and row.stored + row.reported_lost == row.acknowledged
    elif name == "cluster-master-killed":  # six servers share the machine: fewer writes
        assert row.acknowledged > 20 and row.stored + row.reported_lost == row.acknowledged


def test_the_row_counts_an_acknowledged_write_missing_from_the_store_as_lost_silently() -> None:
    row = fault_scenarios.Row("check", acknowledged=10, stored=8, reported_lost=1)
    assert row.lost_silently == 1
