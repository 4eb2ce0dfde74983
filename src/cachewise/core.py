"""The decision core: given an entry, the time and what is in flight, decide what a read does.

Rules of this module:

1. No I/O and no waiting: nothing here imports ``asyncio``, ``threading`` or ``redis``, calls a
   loader or reads a clock. Time and randomness come in as arguments, so every decision can be
   tested with plain values (see ``tests/test_core.py``).
2. Every read, sync or async, in-process or two-tier, goes through ``decide``; the drivers only
   carry its answer out.

An entry's life::

    fill --fresh (ttl minus jitter)--> stale (stale_ttl: served, one refresh runs) --> gone
              ^ XFetch may start one refresh shortly before "stale", more likely the longer
                the last load took (Vattani, Chierichetti and Lowenstein, VLDB 2015).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from ._compiled import speedups
from .events import Event, Fill, Invalidated, Reset

__all__ = [
    "XFETCH_HORIZON",
    "Busy",
    "Decision",
    "Entry",
    "Filled",
    "LeaseReply",
    "Won",
    "decide",
    "lease_reply",
    "make_entry",
]

#: XFetch refreshes early with probability ``exp(-(fresh_until - now) / (load_time * beta))``.
#: Further than ``HORIZON`` of those units before expiry that is below ``exp(-20)`` (2e-9), so
#: the entry records where that zone starts and the hit path compares one float instead of
#: drawing a random number and taking a logarithm on every hit.
XFETCH_HORIZON = 20.0


class _Fields:
    """What an entry holds, as slots: the storage where the C extension is not built (with it,
    ``_speedups.EntryFields`` holds the same fields, its deadlines and counters as C numbers).

    It keeps its full key's hash, not the key's text (a fifth of an entry's memory): an entry
    hashes as its full key and equals it, so L1's index holds each entry as its own key and
    finds it by name, and its table names it when asked (``Entry.full_key``).
    """

    __slots__ = (
        "early_at",
        "fresh_until",
        "hits",
        "key_hash",
        "l1_key",
        "load_time",
        "refresh_at",
        "seen",
        "slot",
        "stale_until",
        "table",
        "tags",
        "value",
    )

    def __init__(
        self,
        value: Any,
        fresh_until: float,
        stale_until: float,
        early_at: float,
        load_time: float,
        full_key: str,
        l1_key: Hashable,
        tags: tuple[str, ...] = (),
        refresh_at: float | None = None,
        table: Any = None,
    ) -> None:
        self.value = value
        self.fresh_until = fresh_until
        #: When a stale entry's read starts its refresh: at once (``fresh_until``) for an entry
        #: this process loaded; a little later for a copy of another process' load, whose own
        #: refresh and notification should replace it first (see ``engine.entries._adopt``).
        self.refresh_at = fresh_until if refresh_at is None else refresh_at
        self.stale_until = stale_until
        self.early_at = early_at
        self.load_time = load_time
        if not isinstance(full_key, str):
            raise TypeError(f"Entry: full_key must be a str, not {type(full_key).__name__}")
        self.key_hash = hash(full_key)
        self.l1_key = l1_key
        self.tags = tags
        self.hits = 0
        #: The low 32 bits of ``hits`` when L1's eviction hand last passed it.
        self.seen = 0
        #: Where L1's eviction ring holds it (-1: not held).
        self.slot = -1
        #: The table (one per decorated function, one for explicit keys) L1 holds it in, which
        #: names its full key (``_l1.Table.name_of``).
        self.table: Any = table

    def __hash__(self) -> int:
        return self.key_hash

    def __eq__(self, other: object) -> bool:
        """Equal to its full key, and to an entry of the same key (in one table: the same
        in-process key, which has one text)."""
        if other is self:
            return True
        if isinstance(other, str):
            return hash(other) == self.key_hash and self.table.name_of(self.l1_key) == other
        if not isinstance(other, _Fields):
            return NotImplemented
        if other.key_hash != self.key_hash:
            return False
        if other.table is self.table:
            return bool(other.l1_key == self.l1_key)
        return bool(other.table.name_of(other.l1_key) == self.table.name_of(self.l1_key))


# Not a conditional expression: mypy takes a class for a base only from a plain assignment.
if TYPE_CHECKING or speedups is None:  # noqa: SIM108
    _Stored = _Fields
else:
    _Stored = speedups.EntryFields


class Entry(_Stored):
    """A cached value with the times that decide its state, and what refresh needs to know.

    Mutable only in ``hits``, ``seen``, ``slot`` and ``table`` (hit counting and L1's
    bookkeeping); the rest is set once when the entry is made.
    """

    __slots__ = ()

    @property
    def full_key(self) -> str:
        """Its Redis key, named by its table (an entry keeps only the key's hash)."""
        name: str = self.table.name_of(self.l1_key)
        return name

    def __repr__(self) -> str:
        return (
            f"Entry({self.l1_key!r}, fresh_until={self.fresh_until:.3f}, "
            f"stale_until={self.stale_until:.3f}, load_time={self.load_time:.4f})"
        )


class Decision(enum.Enum):
    """What a read does with what it found."""

    SERVE = "serve"  # fresh: return the value
    REFRESH = "refresh"  # return the value and start one background refresh (stale or early)
    SERVE_STALE = "serve_stale"  # stale and a refresh is already running: return the value
    WAIT = "wait"  # nothing usable and a load is running: wait for it
    LOAD = "load"  # nothing usable and no load is running: load


def make_entry(
    value: Any,
    *,
    now: float,
    ttl: float,
    stale_ttl: float,
    load_time: float,
    jitter: float,
    jitter_draw: float,
    beta: float,
    full_key: str,
    l1_key: Hashable,
    tags: tuple[str, ...] = (),
    table: Any = None,
) -> Entry:
    """Build the entry a load of ``load_time`` seconds fills at ``now``.

    Jitter only ever shortens the TTL (by up to ``jitter`` of it), so keys filled together do not
    expire together and no entry outlives the TTL the user asked for.
    """
    fresh_until = now + ttl * (1.0 - jitter * jitter_draw)
    # By position (a miss pays for every keyword the entry's constructor matches):
    # value, fresh_until, stale_until, early_at, load_time, full_key, l1_key, tags, refresh_at,
    # table.
    return Entry(
        value,
        fresh_until,
        # Without a stale window, one float for both deadlines (24 bytes less per L1 entry).
        fresh_until + stale_ttl if stale_ttl else fresh_until,
        early_window(now, fresh_until, load_time, beta),
        load_time,
        full_key,
        l1_key,
        tags,
        None,
        table,
    )


def early_window(now: float, fresh_until: float, load_time: float, beta: float) -> float:
    """When XFetch starts drawing for an entry that is fresh from ``now`` to ``fresh_until``.

    Never before half of that life has passed: the draws are made per call, so across a fleet a
    hot key gets thousands a second, and with a load time close to the TTL the formula would
    otherwise fire again right after a refresh landed. Beyond ``HORIZON`` load times before
    expiry the chance is below exp(-20) and no draw is made.
    """
    if beta <= 0:
        return fresh_until
    return max(fresh_until - load_time * beta * XFETCH_HORIZON, (now + fresh_until) / 2)


def decide(entry: Entry | None, now: float, *, loading: bool, beta: float, draw: float) -> Decision:
    """Decide what a read does.

    ``loading`` says whether a load or refresh of this key is already running; ``draw`` is a
    uniform random number in ``(0, 1]`` for XFetch.
    """
    if entry is None or now >= entry.stale_until:
        return Decision.WAIT if loading else Decision.LOAD
    if now >= entry.fresh_until:
        waits = loading or now < entry.refresh_at
        return Decision.SERVE_STALE if waits else Decision.REFRESH
    if loading or now < entry.early_at or beta <= 0:
        return Decision.SERVE
    # XFetch: refresh when now - delta * beta * ln(draw) >= expiry.
    if now - entry.load_time * beta * math.log(draw) >= entry.fresh_until:
        return Decision.REFRESH
    return Decision.SERVE


def is_fresh(entry: Entry | None, now: float) -> TypeGuard[Entry]:
    """Whether ``entry`` may be returned by a plain ``get`` (no loader, so no stale serving)."""
    return entry is not None and now < entry.fresh_until


def serves_at_once(entry: Entry, now: float) -> bool:
    """Whether a read of ``entry`` is served without ``decide``: before ``early_at`` (which is
    never after ``fresh_until``) ``decide`` answers ``SERVE`` whatever its other arguments. The
    generated ``@cached`` wrapper inlines this one comparison: it is the whole L1 hit."""
    return now < entry.early_at


# -- the shared tier: what a read does with the entry Redis holds ---------------------------------
# Deadlines there are on the Redis server's clock (milliseconds), the same for every host.


class Shared(enum.Enum):
    """What a caller about to load does with the entry it found in Redis."""

    FRESH = "fresh"  # serve it (and keep it in L1)
    STALE = "stale"  # serve it now, and refresh it under the lease in the background
    UNUSABLE = "unusable"  # load: absent, past its stale window, or the entry a refresh replaces


def shared_fresh(fresh_until_ms: float, now_ms: float) -> bool:
    """Whether a shared entry is fresh at ``now_ms`` (server clock)."""
    return now_ms < fresh_until_ms


def use_shared(
    fresh_until_ms: float,
    stale_until_ms: float,
    now_ms: float,
    *,
    replacing_ms: float | None,
    uncertainty_ms: float,
) -> Shared:
    """Decide what a leader does with the shared entry it found.

    ``replacing_ms``: for a refresh, the freshness deadline of the entry it replaces (server
    clock). A refresh takes a shared value only if someone already refreshed it: an early
    refresh still finds the very entry it is replacing, fresh, in Redis; the margin covers the
    uncertainty of both clock estimates. A refresh never serves stale (its callers were served).
    """
    if now_ms < fresh_until_ms:
        if replacing_ms is None or fresh_until_ms > replacing_ms + 2 * uncertainty_ms + 5:
            return Shared.FRESH
        return Shared.UNUSABLE
    if replacing_ms is None and now_ms < stale_until_ms:
        return Shared.STALE
    return Shared.UNUSABLE


# -- the lease of a load: what the ACQUIRE script answered ---------------------------------------


@dataclass(frozen=True, slots=True)
class Filled:
    """A value is there (it may be stale): the lease was not taken."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class Won:
    """The lease is this caller's. ``current``: the value there was, if any (a refresh checks
    whether someone refreshed just before); ``pending``: a write-behind value the store does not
    have yet (the load's result instead of the store's older one); ``versions``: the current
    versions of the load's tags, which its entry records."""

    current: bytes | None
    pending: bytes | None
    versions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Busy:
    """Another process holds the lease, for ``wait_ms`` more at most."""

    wait_ms: int


LeaseReply = Filled | Won | Busy


def lease_reply(reply: Sequence[Any]) -> LeaseReply:
    """The ACQUIRE script's reply (``{1, value}``, ``{2, value or "", pending or "", versions}``
    or ``{3, pttl}``), decoded once into what it means."""
    status = int(reply[0])
    if status == 1:
        return Filled(reply[1])
    if status == 2:
        versions = tuple(v.decode() if isinstance(v, bytes) else str(v) for v in reply[3])
        return Won(reply[1] or None, reply[2] or None, versions)
    if status == 3:
        return Busy(int(reply[1]))
    raise ValueError(f"unknown ACQUIRE reply status {status!r}")


# -- another process' event: what it does to this process' L1 --------------------------------------


class L1Effect(enum.Enum):
    """What an event from the namespace's channel does to this process' L1."""

    NOTHING = "nothing"  # this cache's own event, or a lease given back (waiters look again)
    REPLACE = "replace"  # a fill carrying its value: a copy held here is replaced in place
    DROP = "drop"  # a fill too large to travel with its event: a copy held here is dropped
    DROP_NAMED = "drop_named"  # an invalidation: the keys and tags it names are dropped
    FLUSH = "flush"  # a reset (its sender lost track of its invalidations): L1 is emptied


def l1_effect(event: Event, origin: str) -> L1Effect:
    """Decide what ``event`` does to the L1 of the cache whose events carry ``origin``."""
    if event.origin == origin:
        return L1Effect.NOTHING
    if isinstance(event, Fill):
        return L1Effect.REPLACE if event.value is not None else L1Effect.DROP
    if isinstance(event, Invalidated):
        return L1Effect.DROP_NAMED
    if isinstance(event, Reset):
        return L1Effect.FLUSH
    return L1Effect.NOTHING
