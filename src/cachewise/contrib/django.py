"""A Django cache backend on cachewise (``pip install 'cachewise[django]'``).

::

    CACHES = {
        "default": {
            "BACKEND": "cachewise.contrib.django.CachewiseCache",
            "LOCATION": "redis://cache:6379/0",     # "" for an in-process cache
            "TIMEOUT": 300,
            "OPTIONS": {"namespace": "django", "l1_maxsize": 0},   # passed to cachewise.Cache
        }
    }

Django's whole cache API (``get``, ``set``, ``add``, ``delete``, ``get_many``, ``set_many``,
``delete_many``, ``incr``/``decr``, ``touch``, ``has_key``, ``clear``, ``get_or_set``, and
their ``a…`` forms), with ``KEY_PREFIX``, ``VERSION`` and ``KEY_FUNCTION`` as Django applies
them. Behaviour a Django user may not expect, and why:

- ``timeout=None`` ("forever") is ``FOREVER`` seconds (ten years): every cachewise entry expires.
  ``timeout=0`` or less stores nothing and drops the key, as Django's backends do.
- Values are pickled, as Django's own Redis backend does, since Django caches arbitrary objects
  (responses, model instances). Whoever can write to the Redis can therefore run code in the
  processes that read it: give the cache a Redis of its own.
- With a Redis ``LOCATION``, L1 is off unless ``OPTIONS`` sets ``l1_maxsize``: Django's cache
  API promises that what one worker sets, the next request in any worker reads, and an L1 is
  only told of other workers' writes a moment later. Turn it on for keys read far more than
  written. Caches of one process with the same ``LOCATION`` and ``OPTIONS`` (aliases with
  another ``KEY_PREFIX`` or ``VERSION``) share one cachewise ``Cache``.
- ``add`` and ``get_or_set`` are single-flight (one process loads, the others get its value).
- ``incr`` and ``decr`` of an integer are atomic, as with Django's own Redis backend (which
  uses ``INCRBY``): integers are stored as such rather than pickled, and with Redis one script
  adds to the value in place, keeping its timeout, and drops every process' L1 copy. What is
  not an integer a Redis script can add to exactly (a float, a value pickled by an earlier
  release, beyond ±2**53) is read and written again, as Django's base backend does, which is
  not atomic across processes and gives the default timeout. In-process, one lock makes them
  atomic. ``touch`` with Redis is one script too (the value's deadlines and expiry set anew
  where it is), so it never undoes a write that races with it.
- ``close()`` (Django calls it after every request) keeps the connection pool; the cache is
  closed when the process exits.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterable
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from .._drivers import Plan, run_async, run_sync
from ..cache import Cache

__all__ = ["FOREVER", "CachewiseCache"]

#: What Django's ``timeout=None`` ("forever") becomes: ten years, in seconds.
FOREVER = 10 * 365 * 24 * 3600
_MISSING = object()
_SHARED: dict[tuple[str, str], Cache] = {}
_LOCK = threading.Lock()
#: ``incr`` and ``touch`` that read and write again: under one lock, which makes them atomic
#: in-process (the process is the whole cache), and in this process only otherwise.
_RMW_LOCK = threading.Lock()


def _shared(location: str, options: dict[str, Any]) -> Cache:
    """The cachewise ``Cache`` of a ``LOCATION`` and ``OPTIONS`` in this process."""
    key = (location, repr(sorted(options.items())))
    with _LOCK:
        cache = _SHARED.get(key)
        if cache is None:
            settings = {"namespace": "django", **options}
            if location:
                settings.setdefault("l1_maxsize", 0)
            cache = _SHARED[key] = Cache(location or None, **settings)
        return cache


class CachewiseCache(BaseCache):  # type: ignore[misc]  # Django ships no type hints
    """Django's cache API on a cachewise ``Cache`` (see the module's notes)."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        if isinstance(server, list | tuple):
            server = server[0] if server else ""
        options = dict(params.get("OPTIONS") or {})
        for name in ("MAX_ENTRIES", "CULL_FREQUENCY"):  # Django's own (culling): not ours
            options.pop(name, None)
        self._cache = _shared(server or "", options)
        self._backend = self._cache._engine.backend

    # -- keys, timeouts, values ------------------------------------------------------------------

    def _key(self, key: Any, version: int | None) -> str:
        made: str = self.make_and_validate_key(key, version=version)
        return made

    def _ttl(self, timeout: Any) -> float:
        """Seconds to keep a value; 0 or less: not kept."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return FOREVER
        return float(timeout)

    def _held(self, key: str) -> bool:
        if self._backend is not None:
            full = self._cache._target(key).full_key
            return bool(self._backend.sync_client().exists(full))
        return self._cache.get(key, _MISSING) is not _MISSING

    @staticmethod
    def _dumps(value: Any) -> Any:
        """An ``int`` as itself (so that ``incr`` can add to it in Redis, as Django's own Redis
        backend stores it), anything else pickled."""
        return value if type(value) is int else pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def _loads(raw: Any, default: Any = None) -> Any:
        if raw is _MISSING:
            return default
        return raw if type(raw) is int else pickle.loads(raw)

    def _increment(self, key: Any, delta: Any, version: int | None) -> Plan[Any] | None:
        """The plan that adds ``delta`` in Redis (``Engine.increment``); None when the value is
        read and written instead: a delta that is not an integer, or one a Lua number does not
        hold exactly (the script adds in doubles)."""
        if type(delta) is not int or not -(2**53) < delta < 2**53:
            return None
        return self._cache._engine.increment(self._cache._target(self._key(key, version)), delta)

    @staticmethod
    def _added(key: Any, new: int | bool | None) -> int | None:
        """What ``incr``'s script answered: the new integer, a ``ValueError`` for a missing key
        (Django's), or None when the value is to be read and written instead."""
        if new is None:
            raise ValueError(f"Key '{key}' not found.")
        return None if new is False else new

    # -- the cache API ---------------------------------------------------------------------------

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self._loads(self._cache.get(self._key(key, version), _MISSING), default)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        made, raw, ttl = self._key(key, version), self._dumps(value), self._ttl(timeout)
        if ttl <= 0:
            self._cache.delete(made)
        else:
            self._cache.set(made, raw, ttl=ttl)

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made, raw, ttl = self._key(key, version), self._dumps(value), self._ttl(timeout)
        if ttl <= 0:
            return True  # as Django's backends: "added", and expired at once
        added: list[bool] = []

        def load() -> Any:
            added.append(True)
            return raw

        self._cache.get_or_load(made, load, ttl=ttl)
        return bool(added)

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if ttl <= 0:
            return default() if callable(default) else default
        raw = self._cache.get_or_load(
            made, lambda: self._dumps(default() if callable(default) else default), ttl=ttl
        )
        return self._loads(raw)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if self._backend is not None and ttl > 0:
            done = run_sync(self._cache._engine.retime(self._cache._target(made), ttl))
            if done is not None:
                return bool(done)
        with _RMW_LOCK:  # in-process, or not an envelope the script rewrites
            return self._touch_again(made, ttl)

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        made, ttl = self._key(key, version), self._ttl(timeout)
        if self._backend is not None and ttl > 0:
            done = await run_async(self._cache._engine.retime(self._cache._target(made), ttl))
            if done is not None:
                return bool(done)
        return bool(await super().atouch(key, timeout, version))  # ``touch`` in a thread

    def _touch_again(self, made: str, ttl: float) -> bool:
        """``touch`` by reading and writing the value again (Django's base backend's way)."""
        raw = self._cache.get(made, _MISSING)
        if raw is _MISSING:
            return False
        if ttl <= 0:
            self._cache.delete(made)
        else:
            self._cache.set(made, raw, ttl=ttl)
        return True

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        plan = None if self._backend is None else self._increment(key, delta, version)
        new = None if plan is None else self._added(key, run_sync(plan))
        if new is not None:
            return new
        with _RMW_LOCK:  # in-process, or not an integer the script adds to
            return super().incr(key, delta, version)

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        if self._backend is None:
            return self.incr(key, delta, version)  # no I/O: nothing to wait for
        plan = self._increment(key, delta, version)
        new = None if plan is None else self._added(key, await run_async(plan))
        return await super().aincr(key, delta, version) if new is None else new

    def delete(self, key: Any, version: int | None = None) -> bool:
        made = self._key(key, version)
        held = self._held(made)
        self._cache.delete(made)
        return held

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._cache.get(self._key(key, version), _MISSING) is not _MISSING

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        made = {self._key(key, version): key for key in keys}
        found = self._cache.get_many(list(made))
        return {made[k]: self._loads(raw) for k, raw in found.items()}

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[Any]:
        for key, value in data.items():
            self.set(key, value, timeout, version)
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        made = [self._key(key, version) for key in keys]
        if made:
            self._cache.invalidate(*made)

    def clear(self) -> None:
        self._cache.clear()

    def close(self, **kwargs: Any) -> None:
        """Django calls this after every request: the connection pool stays."""
