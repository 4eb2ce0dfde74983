"""Exact L1 hit counts per cached function, so that ``stats()`` and exporters sum a count per
function instead of every entry's.

An L1 hit bumps its entry's ``hits`` (second-chance eviction needs it). Where the C extension
is built, the compiled hit also counts the hits it serves (a C integer: free), the slow path
counts its L1 hits per table, and a cache counts from the start: ``stats()`` costs the same
whatever the cache holds. In pure Python, counting per function as well would cost every hit
(a sixth of one) for a figure only an exporter needs, so a cache counts once an exporter asks
(``start``): its generated wrappers switch to the code compiled beside theirs with a
per-function counter (``function.__code__`` is swapped: callers keep the function they hold),
the slow path counts, and each table's hits until then are taken once as the base. Until then
``stats()`` sums the entries' hits.
"""

from __future__ import annotations

from typing import Any

from . import _switch


def start(engine: Any) -> None:
    """Count ``engine``'s L1 hits per table from now on (idempotent)."""
    with engine.lock:
        if engine.l1.counted is not None:
            return
        tables = {id(engine.explicit): engine.explicit}
        tables.update((id(spec.table), spec.table) for spec in list(engine.functions))
        engine.l1.counted = {key: engine.l1.hits_of(table) for key, table in tables.items()}
    # After ``counted`` is set: a wrapper made from now on sees it and counts by itself.
    for wrapper in _switch.wrappers_of(engine):
        counting(wrapper)


def counting(wrapper: Any) -> None:
    """Switch one generated wrapper to its counting code."""
    wrapper.__code__ = wrapper.__globals__["_cw_counting_code"]


def of(engine: Any, table: Any, wrapper: Any) -> int:
    """The L1 hits of one table while counting: its base and slow-path hits, plus the inline
    hits of ``wrapper``, the generated wrapper that reads it (if any), and of its compiled
    front and probe."""
    hits: int = engine.l1.counted.get(id(table), 0)
    if wrapper is not None:
        names = wrapper.__globals__
        hits += names["_cw_count"][0]
        for compiled in (names.get("_cw_front"), names.get("_cw_hit")):
            if compiled is not None:
                hits += compiled.served
    return hits
