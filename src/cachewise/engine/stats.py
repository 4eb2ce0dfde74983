"""The counters and latency percentiles of ``stats()``."""

from __future__ import annotations

import logging
from typing import Any

from .. import _hits
from .._l1 import Table
from .state import EngineState
from .values import Count

log = logging.getLogger("cachewise")


class Stats(EngineState):
    """The counters and latency percentiles of ``stats()``. A layer of ``Engine``."""

    # -- stats ----------------------------------------------------------------------------------

    def function_hits(self) -> dict[str, int]:
        """L1 hits per cached function (``explicit keys``: ``get``, ``set``, ``key=``
        functions), each a sum over that function's table, without the lock."""
        counting = self.l1.counted is not None  # counted as they happen: O(functions)

        def hits_of(table: Table, wrapper: Any = None) -> int:
            return _hits.of(self, table, wrapper) if counting else self.l1.hits_of(table)

        # Functions with key= share the explicit table (their wrappers never hit inline).
        out = {"explicit keys": hits_of(self.explicit)}
        for spec in list(self.functions):
            if spec.table is not self.explicit:
                out[spec.where] = out.get(spec.where, 0) + hits_of(spec.table, spec.wrapper)
        return out

    def stats(self) -> dict[str, Any]:
        hits = sum(self.function_hits().values())
        size = len(self.l1)
        evictions = self.l1.evictions
        counts = dict(self.counts)
        for name in (Count.MISSES, Count.L2_HITS):
            counts[name] = counts.get(name, 0) + self.lone_hits
        out: dict[str, Any] = {name.value: counts.get(name, 0) for name in Count}
        out.update(
            l1_hits=hits,
            l1_size=size,
            l1_maxsize=self.l1.maxsize,
            evictions=evictions,
            load_latency=self.load_latency.summary(),
            miss_latency=self.miss_latency.summary(),
        )
        return out
