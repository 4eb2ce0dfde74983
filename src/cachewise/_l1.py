"""L1: the in-process tier, a bounded LRU on ``cachetools`` with a plain-dict fast path in front.

A hit through ``cachetools.LRUCache.__getitem__`` runs several Python-level calls to update the
recency order, which alone costs more than the whole hit budget (a few dict lookups). So the hit
path reads plain dicts (one per decorated function, one for explicit keys) and only bumps the
entry's ``hits`` counter; ``cachetools`` keeps the bookkeeping of what is held and in which order,
and on eviction gives an entry that was hit since it was last considered a second chance (the
CLOCK approximation of LRU that OS page caches use) instead of moving it on every hit.

Not thread-safe by itself: the engine calls every method here under its lock. The hit path
only reads the dicts, which is safe under the GIL.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import cachetools

from .core import Entry

Table = dict[Hashable, Entry]
_HITS = operator.attrgetter("hits")


class _SecondChanceLRU(cachetools.LRUCache[str, Entry]):
    """``cachetools.LRUCache`` keyed by full key, whose eviction skips entries hit recently.
    Holds the entries themselves (each knows its table): a (table, entry) pair per entry
    cost 56 bytes more."""

    def __init__(self, maxsize: int, on_evict: Callable[[Entry], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, Entry]:
        for _ in range(len(self)):
            key, entry = super().popitem()
            if entry.hits != entry.seen:
                # Hit since last considered: move it to the most-recent end (there is room now).
                entry.seen = entry.hits
                super().__setitem__(key, entry)
                continue
            self._on_evict(entry)
            return key, entry
        key, entry = super().popitem()
        self._on_evict(entry)
        return key, entry


class L1:
    """The in-process store: tables for the hit path, LRU bookkeeping, a tag index."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        #: False while L1 cannot be kept coherent (the engine's event channel is refused).
        self.accepting = True
        self.evictions = 0
        #: Per table (by id): hits of its entries no longer held (replaced, dropped, evicted).
        self.retired: dict[int, int] = {}
        #: Per table (by id), once an exporter counts hits (``_hits``): its base and the hits
        #: the slow path served; None until then.
        self.counted: dict[int, int] | None = None
        self._lru = _SecondChanceLRU(max(maxsize, 1), self._evicted)
        self._tags: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def _evicted(self, entry: Entry) -> None:
        self.evictions += 1
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        table = entry.table
        if table.get(entry.l1_key) is entry:
            del table[entry.l1_key]
        if entry.hits:
            self.retired[id(table)] = self.retired.get(id(table), 0) + entry.hits
        for tag in entry.tags:
            members = self._tags.get(tag)
            if members is not None:
                members.discard(entry.full_key)
                if not members:
                    del self._tags[tag]

    def put(self, table: Table, entry: Entry) -> None:
        """Hold ``entry`` (replacing what ``table`` held under its key)."""
        if self.maxsize == 0 or not self.accepting:
            return
        old = self._lru.pop(entry.full_key, None)
        if old is not None:
            self._forget(old)
        entry.table = table
        self._lru[entry.full_key] = entry
        table[entry.l1_key] = entry
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(entry.full_key)

    def drop(self, full_key: str) -> Entry | None:
        """Stop holding the entry under ``full_key``; return it if there was one."""
        held = self._lru.pop(full_key, None)
        if held is None:
            return None
        self._forget(held)
        return held

    def held(self, full_key: str) -> Entry | None:
        """The entry held under ``full_key`` (its ``table`` is where it is held), without
        touching the LRU order."""
        return self._lru.get(full_key) if full_key in self._lru else None

    def tagged(self, tags: Iterable[str]) -> set[str]:
        """Full keys of the held entries carrying any of ``tags``."""
        found: set[str] = set()
        for tag in tags:
            found |= self._tags.get(tag, set())
        return found

    def clear(self) -> None:
        """Drop everything (a fork, or a coherence channel that cannot say what it missed)."""
        for entry in list(self._lru.values()):
            self._forget(entry)
        self._lru.clear()
        self._tags.clear()

    def hit(self, table: Table, entry: Entry) -> None:
        """A hit the slow path served from ``table``."""
        entry.hits += 1
        counted = self.counted
        if counted is not None:
            counted[id(table)] = counted.get(id(table), 0) + 1

    def hits_of(self, table: Table) -> int:
        """The L1 hits of one table's entries, held now or retired. Without the engine's lock
        (a scrape never blocks readers): the sum over a plain dict runs in C, which no other
        thread interleaves with under the GIL."""
        hits: int = sum(map(_HITS, table.values()))
        return self.retired.get(id(table), 0) + hits

    def entries(self) -> list[Any]:
        """The held entries (for tests and introspection)."""
        return list(self._lru.values())
