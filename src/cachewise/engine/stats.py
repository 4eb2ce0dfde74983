"""The counters and latency percentiles of ``stats()``."""

from __future__ import annotations

import logging
from typing import Any

from .state import EngineState
from .values import Count

log = logging.getLogger("cachewise")


class Stats(EngineState):
    """The counters and latency percentiles of ``stats()``. A layer of ``Engine``."""

    # -- stats ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            hits = self.l1.live_hits()
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
