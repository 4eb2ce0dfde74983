"""Explicit keys read, not loaded: ``get_many`` (L1, then one MGET for the rest), and the L1
check of a plain ``get`` (``held``)."""

from __future__ import annotations

from typing import Any

from .. import codec
from .._drivers import Plan, run_async, run_sync
from ..core import is_fresh
from ..keys import MAX_ARGS_CHARS
from ..keys import explicit as explicit_key
from ..redis import REDIS_ERRORS, Fetch
from .lone import LoneReads
from .values import _UNREAD, Count


class GetMany(LoneReads):
    """Explicit keys from L1, then one MGET, at a cost close to the raw ``MGET``'s.
    A layer of ``Engine``."""

    def get_many(self, keys: list[str]) -> Plan[dict[str, Any]]:
        """Fresh values of explicit keys: L1 first, then one MGET for the rest.

        Works on the key strings themselves (no ``Target`` per key until one is kept in L1):
        per-key work is what separates a bulk read from the raw ``MGET`` it wraps.
        """
        if self.uncached():
            return {}
        found, rest = self._local_many(keys)
        backend = self.backend
        if not rest or backend is None:
            return found
        epoch = self._lone()  # what is read is kept in L1 only if nothing changed meanwhile
        if epoch < 0:
            try:
                if self._setup_due(backend):
                    yield from self._ensure_backend()
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)
                return found
            epoch = self.epoch
        names = self._names(rest)
        fetched = yield Fetch(backend, names)
        self._found_many(found, rest, names, fetched, epoch)
        return found

    def get_many_sync(self, keys: list[str]) -> dict[str, Any]:
        """``get_many`` carried out in this thread."""
        return run_sync(self.get_many(keys))

    async def get_many_async(self, keys: list[str]) -> dict[str, Any]:
        """``get_many`` carried out on the running loop."""
        return await run_async(self.get_many(keys))

    def held(self, key: str) -> Any:
        """The fresh value L1 holds for the explicit ``key``, counted as a hit, or ``_UNREAD``
        (then ``get_many`` reads it): a plain ``get`` that L1 serves needs no plan."""
        table = self.explicit
        entry = table.get(key)
        if entry is None or not is_fresh(entry, self.clock()) or self.uncached():
            return _UNREAD
        self.l1.hit(table, entry)
        return entry.value

    def _local_many(self, keys: list[str]) -> tuple[dict[str, Any], list[str]]:
        """The fresh values L1 holds, and the keys it does not."""
        found: dict[str, Any] = {}
        table = self.explicit
        if not table:  # no L1, or an empty one: nothing to look up
            return found, keys
        now = self.clock()
        rest: list[str] = []
        for key in keys:
            entry = table.get(key)
            if is_fresh(entry, now):
                entry.hits += 1  # ``L1.hit``; the table's count once for all (``count_hits``)
                found[key] = entry.value
            else:
                rest.append(key)
        if found:
            self.l1.count_hits(table, len(found))
        return found, rest

    def _names(self, keys: list[str]) -> list[str]:
        """The Redis names of explicit keys (``explicit_key``, inlined for the common case)."""
        # ``self.space.entry``, inlined for keys without braces (the per-key cost of a bulk read).
        prefix, entry = self.space.prefix, self.space.entry
        # The common case, checked and built for all keys at once (a few C calls instead of
        # steps per key): no brace, no "#", no NUL (the names are split at them), none too long.
        joined = "\0".join(keys)
        if (
            "{" not in joined
            and "}" not in joined
            and "#" not in joined
            and joined.count("\0") == len(keys) - 1
            and (len(joined) <= MAX_ARGS_CHARS or max(map(len, keys)) <= MAX_ARGS_CHARS)
        ):
            return (f"{prefix}{{" + f"}}\0{prefix}{{".join(keys) + "}").split("\0")
        return [
            f"{prefix}{{{k}}}"
            if len(k) <= MAX_ARGS_CHARS and k[0] != "#" and "{" not in k and "}" not in k
            else entry(explicit_key(k))
            for k in keys
        ]

    def _found_many(
        self,
        found: dict[str, Any],
        keys: list[str],
        names: list[str],
        fetched: tuple[Any, BaseException | None],
        epoch: int,
    ) -> None:
        """Add to ``found`` the fresh values of what was read for ``keys``; keep them in L1
        unless something changed since ``epoch``."""
        raws, error = fetched
        if error is not None:
            self.redis_failed(error)
            return
        now_ms = self.backend.server_now_ms()  # type: ignore[union-attr]
        before = len(found)
        kept: list[tuple[str, list[Any]]] | None = [] if self.l1.maxsize else None
        for key in codec.fresh_values(keys, raws, now_ms, found, kept):
            at = keys.index(key)  # a key given twice was read twice: same name, same bytes
            self._decode(raws[at], key=names[at])  # counts and logs it
        self.counts[Count.L2_HITS] += len(found) - before
        if kept:
            adopted = []
            for key, body in kept:
                target = self.explicit_target(key)
                adopted.append((target.full_key, self._adopt(target, codec.envelope(body))))
            with self.lock:
                if self.epoch == epoch:
                    for name, entry in adopted:
                        if name not in self.flights:
                            self.l1.put(self.explicit, entry)
