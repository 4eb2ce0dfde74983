"""The counters and latency percentiles of ``stats()``."""

from __future__ import annotations

import logging
from typing import Any

from .state import EngineState

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
        for name in ("misses", "l2_hits"):
            counts[name] = counts.get(name, 0) + self.lone_hits
        names = [
            "misses", "loads", "load_errors", "refreshes", "early_refreshes", "refresh_errors",
            "stale_served", "coalesced_waits", "wait_timeouts", "sync_loads_on_loop", "sets",
            "invalidations", "l2_hits", "lease_waits", "lease_wait_timeouts", "fills_refused",
            "redis_errors", "decode_errors", "invalidations_received", "l1_flushes",
            "pending_writes_read", "loads_without_redis", "outage_invalidations_sent",
            "oversize_values", "tag_misses",
        ]  # fmt: skip
        out: dict[str, Any] = {name: counts.get(name, 0) for name in names}
        out.update(
            l1_hits=hits,
            l1_size=size,
            l1_maxsize=self.l1.maxsize,
            evictions=evictions,
            load_latency=self.load_latency.summary(),
            miss_latency=self.miss_latency.summary(),
        )
        return out


