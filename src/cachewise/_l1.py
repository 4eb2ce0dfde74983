"""L1: the in-process tier, a bounded cache on ``cachetools`` with a plain-dict fast path in front.

A hit through ``cachetools.LRUCache.__getitem__`` runs several Python-level calls to update the
recency order, which alone costs more than the whole hit budget (a few dict lookups). So the hit
path reads dicts (a ``Table`` per decorated function, one for explicit keys) and only bumps the
entry's ``hits`` counter; a ``cachetools.Cache`` keeps what is held and its bound, and evicts
by CLOCK, the approximation of LRU that OS page caches use: the entries sit in a ring, and the
eviction hand gives an entry that was hit since it last passed a second chance.

Not thread-safe by itself: the engine calls every method here under its lock. The hit path
only reads the dicts, which is safe under the GIL.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import cachetools

from ._compiled import speedups
from .core import Entry


class Table(dict[Hashable, Entry]):
    """One function's entries by in-process key (or the explicit keys'), the dict the hit path
    reads; it also names an entry's full key (``name_of``), which the entry does not keep."""

    __slots__ = ("name_of",)

    def __init__(self, name_of: Callable[[Hashable], str]) -> None:
        super().__init__()
        #: The full (Redis) key of an in-process key of this table.
        self.name_of = name_of


_HITS = operator.attrgetter("hits")
#: ``Entry.seen`` keeps the low 32 bits of the hit count (4 bytes an entry, not 8).
_LOW_BITS = 0xFFFFFFFF
_Cache = cachetools.Cache  # its methods called directly: a super() lookup per call is measurable


class _ClockCache(cachetools.Cache[Any, Entry]):
    """``cachetools.Cache`` of entries, each its own key, evicting by CLOCK.

    An entry hashes as its full key and equals it, so it is found by that name, which it does
    not keep (the text was a fifth of its memory). Built the way cachetools' own LRU and LFU
    caches are (their order kept beside ``Cache``'s mapping), with a ring of the entries
    instead of an ordered dict, since the hit path never tells this class about a hit. A ring
    slot costs 8 bytes an entry; the ordered dict's link and slot cost about 90. Each entry
    knows its ring slot (``Entry.slot``), so dropping one frees its slot at once and a dropped
    value is never kept alive by the ring."""

    def __init__(self, maxsize: int, on_evict: Callable[[Entry], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict
        self._ring: list[Entry | None] = []
        self._free: list[int] = []
        self._hand = 0

    def __setitem__(self, key: Any, entry: Entry) -> None:
        if key in self:
            del self[key]
        self.add(entry)

    def add(self, entry: Entry) -> None:
        """Hold ``entry``, whose key is not held (``L1.put`` drops it first)."""
        _Cache.__setitem__(self, entry, entry)  # calls popitem() first when full
        free = self._free
        if free:
            entry.slot = slot = free.pop()
            self._ring[slot] = entry
        else:
            entry.slot = len(self._ring)
            self._ring.append(entry)

    def __delitem__(self, key: Any) -> None:
        self._unring(self[key])
        _Cache.__delitem__(self, key)

    def _unring(self, entry: Entry) -> None:
        self._ring[entry.slot] = None
        self._free.append(entry.slot)
        entry.slot = -1

    def popitem(self) -> tuple[Entry, Entry]:
        ring = self._ring
        size = len(ring)
        hand = self._hand
        # Two turns at most: the first may only take away second chances.
        for _ in range(2 * size):
            if hand >= size:
                hand = 0
            entry = ring[hand]
            hand += 1
            if entry is None:
                continue
            hits = entry.hits & _LOW_BITS
            if hits != entry.seen:  # hit since the hand last passed: a second chance
                entry.seen = hits
                continue
            self._hand = hand
            self._unring(entry)
            _Cache.__delitem__(self, entry)
            self._on_evict(entry)
            return entry, entry
        self._hand = hand
        raise KeyError("popitem(): cache is empty")


class L1:
    """The in-process store: tables for the hit path, LRU bookkeeping, a tag index."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        #: False while L1 cannot be kept coherent (the engine's event channel is refused).
        self.accepting = True
        self.evictions = 0
        #: Per table (by id): hits of its entries no longer held (replaced, dropped, evicted).
        self.retired: dict[int, int] = {}
        #: Per table (by id), while hits are counted (``_hits``: from the start where the C
        #: extension is built, else once an exporter asks): its base and the hits the slow
        #: path served; None until then.
        self.counted: dict[int, int] | None = None if speedups is None else {}
        self._bounded = _ClockCache(max(maxsize, 1), self._evicted)
        #: Tag -> the held entries carrying it.
        self._tags: dict[str, set[Entry]] = {}

    def __len__(self) -> int:
        return len(self._bounded)

    def _evicted(self, entry: Entry) -> None:
        self.evictions += 1
        self._forget(entry)

    def _forget(self, entry: Entry) -> None:
        table = entry.table
        if table.get(entry.l1_key) is entry:
            del table[entry.l1_key]
        if entry.hits and self.counted is None:  # read only by ``hits_of``, until counting
            self.retired[id(table)] = self.retired.get(id(table), 0) + entry.hits
        for tag in entry.tags:
            members = self._tags.get(tag)
            if members is not None:
                members.discard(entry)
                if not members:
                    del self._tags[tag]

    def put(self, table: Table, entry: Entry) -> None:
        """Hold ``entry`` (replacing what ``table`` held under its key)."""
        if self.maxsize == 0 or not self.accepting:
            return
        bounded = self._bounded
        entry.table = table
        if entry in bounded:  # an entry of the same key
            self._forget(bounded.pop(entry))
        bounded.add(entry)
        table[entry.l1_key] = entry
        for tag in entry.tags:
            self._tags.setdefault(tag, set()).add(entry)

    def drop(self, key: str | Entry) -> Entry | None:
        """Stop holding the entry under ``key`` (a full key, or an entry: then its key,
        without naming it); return it if there was one."""
        held = self._bounded.get(key)
        if held is None:
            return None
        del self._bounded[held]  # by the entry: one lookup, without naming it again
        self._forget(held)
        return held

    def held(self, full_key: str) -> Entry | None:
        """The entry held under ``full_key`` (its ``table`` is where it is held)."""
        return self._bounded.get(full_key)

    def tagged(self, tags: Iterable[str]) -> dict[str, Entry]:
        """The held entries carrying any of ``tags``, by full key (``drop`` them by entry:
        each is named once)."""
        return {entry.full_key: entry for tag in tags for entry in self._tags.get(tag, ())}

    def clear(self) -> None:
        """Drop everything (a fork, or a coherence channel that cannot say what it missed)."""
        for entry in list(self._bounded.values()):
            self._forget(entry)
            entry.slot = -1
        self._bounded = _ClockCache(max(self.maxsize, 1), self._evicted)
        self._tags.clear()

    def hit(self, table: Table, entry: Entry) -> None:
        """A hit the slow path served from ``table``."""
        entry.hits += 1
        counted = self.counted
        if counted is not None:
            counted[id(table)] = counted.get(id(table), 0) + 1

    def count_hits(self, table: Table, hits: int) -> None:
        """``hits`` hits the slow path served from ``table``, each entry's already counted."""
        counted = self.counted
        if counted is not None:
            counted[id(table)] = counted.get(id(table), 0) + hits

    def hits_of(self, table: Table) -> int:
        """The L1 hits of one table's entries, held now or retired. Without the engine's lock
        (a scrape never blocks readers): the sum over a plain dict runs in C, which no other
        thread interleaves with under the GIL."""
        hits: int = sum(map(_HITS, table.values()))
        return self.retired.get(id(table), 0) + hits

    def entries(self) -> list[Any]:
        """The held entries (for tests and introspection)."""
        return list(self._bounded.values())
