"""Counters have one list of names (``engine.values.Count``): no counter is named by hand."""

from __future__ import annotations

import pathlib
import re

from cachewise import Cache
from cachewise.engine.values import Count

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "cachewise"


def test_no_counter_is_named_by_a_string_literal() -> None:
    named = [
        f"{path.relative_to(SRC)}: {match.group(0)}"
        for path in SRC.rglob("*.py")
        for match in re.finditer(r'counts\[\s*["\'][a-z_0-9]+["\']\s*\]', path.read_text())
    ]
    assert named == []


def test_stats_reports_every_counter_under_its_name() -> None:
    stats = Cache(namespace="names").stats()
    names = [c.value for c in Count]
    assert [name for name in stats if name in names] == names
    assert all(stats[c.value] == 0 for c in Count)
