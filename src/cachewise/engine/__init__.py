"""The engine: every cache operation written once, as a plan that both drivers carry out.

A plan is a generator: it reads the in-process state, asks ``core.decide`` what to do, and
yields the operations (``Spawn``, ``Invoke``, ``Wait``, Redis calls) it needs from a
driver. ``Cache`` and the decorators
run plans with ``run_sync`` or ``await run_async``; nothing here blocks or awaits.

Rules of this module:

1. Every mutation of L1 and of the flight table happens under ``self.lock``. The hit path reads
   the L1 tables without it (a dict read is atomic under the GIL).
2. A fill is stored only if its flight was not invalidated while it ran, checked under the same
   lock as the invalidation: an invalidation that happened during a load always wins. With
   Redis, the shared fill is also refused unless the loader's lease still holds
   (``redis.lua.STORE``).
3. A plan started with ``Spawn`` (a load, a refresh) never raises: its outcome goes to its flight.
4. Redis trouble is counted and logged, never raised to a caller: the value comes from L1, from
   a load, or from the origin; single-flight in the process still holds.
"""

from __future__ import annotations

from .bulk import Bulk
from .stats import Stats
from .values import (
    EVENT_VALUE_LIMIT,
    MISSING,
    InvalidationEvent,
    Policy,
    StoreCall,
    Target,
)

__all__ = [
    "EVENT_VALUE_LIMIT",
    "MISSING",
    "Engine",
    "InvalidationEvent",
    "Policy",
    "StoreCall",
    "Target",
]


class Engine(Bulk, Stats):
    """The in-process state of one ``Cache`` and the plans that read and change it, in layers,
    one job each, every layer free to use those below it: ``state`` (fields, helpers),
    ``coherence`` (Redis set-up, events, the backlog), ``writes``, ``fill`` (L2, loads,
    refreshes), ``lease`` (ACQUIRE, the load under it, give-backs), ``read`` (L1, flights,
    stale-while-revalidate), ``lone`` (one GET first, the drivers of a read), ``getmany``
    (explicit keys), ``bulk`` (``get_or_load_many``); and ``stats`` beside them."""
