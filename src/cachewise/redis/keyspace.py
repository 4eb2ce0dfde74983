"""The one builder of a namespace's Redis key and channel names: every other module asks it,
none builds a name by hand or slices one apart.

The layout, for namespace ``ns`` (``[A-Za-z0-9_.-]``, so no namespace's names reach into
another's): every key starts with ``ns:``, so an ACL ``~ns:*`` covers them all, and the keys one
script touches for one entry share the entry's hash tag, so that on a Redis Cluster each script
runs in one slot while entries spread over every master:

=============================  ====================================================
``ns:{<name>}``                the value called ``<name>`` (its cache key)
``ns:lease:{<name>}``          the lease of the process loading it
``ns:wbpending:{<name>}``      its write-behind write the store does not have yet
``ns:tagv:{<tag>}``            the current version of a tag
``ns:wb:{<writer>}``           a write-behind writer's queue (a stream); beside it
                               ``ns:wbdead:``, ``ns:wbflusher:``, ``ns:wbnewest:`` and
                               ``ns:wbepoch:{<writer>}`` (dead letters, flusher lease,
                               newest write per key, the queue's epoch)
``ns:events``                  the registry of listeners (a sorted set)
=============================  ====================================================

Channels: ``ns:events``, which every listener hears, and ``ns:events:<listener id>``, each
listener's own. A name holding ``{`` or ``}`` is tagged with its digest instead,
``{#<sha256 prefix>}<name>``: a brace of the user's would otherwise end or start the tag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any


def braced(name: str) -> str:
    """``name`` behind its hash tag: ``{name}``, or ``{#<digest>}name`` if it holds a brace."""
    if "{" in name or "}" in name:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        return f"{{#{digest}}}{name}"
    return f"{{{name}}}"


def unbraced(tagged: str) -> str:
    """``braced``'s inverse."""
    if tagged.startswith("{#"):
        return tagged[tagged.index("}") + 1 :]
    return tagged[1:-1]


class KeySpace:
    """The names of one namespace: its values, what cachewise keeps about them, its channels."""

    __slots__ = ("_lease", "_pending", "_tag", "channel", "namespace", "prefix")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        #: What every key of the namespace starts with: ``<namespace>:``.
        self.prefix = f"{namespace}:"
        #: The channel every listener of the namespace hears; also the registry's name.
        self.channel = f"{namespace}:events"
        self._lease = f"{namespace}:lease:"
        self._pending = f"{namespace}:wbpending:"
        self._tag = f"{namespace}:tagv:"

    def entry(self, name: str) -> str:
        """The key of the value called ``name`` in this namespace."""
        return self.prefix + braced(name)

    def entry_of(self, base: str, text_of: Callable[[Any], str]) -> Callable[[Any], str]:
        """``x -> entry(base + text_of(x))`` as one function: a cached function's keys, named
        on each of its misses, a call fewer than composing the two."""
        prefix = self.prefix

        def entry(x: Any) -> str:
            return prefix + braced(base + text_of(x))

        return entry

    def name_of(self, full_key: str) -> str:
        """The name within the namespace of a value's key (``entry``'s inverse)."""
        return unbraced(full_key[len(self.prefix) :])

    def lease(self, full_key: str) -> str:
        """The lease of the process loading a value (in the value's slot)."""
        return self._lease + full_key[len(self.prefix) :]

    def key_of_lease(self, lease: str) -> str:
        """The value a lease is for (``lease``'s inverse)."""
        return self.prefix + lease[len(self._lease) :]

    def pending(self, full_key: str) -> str:
        """A value's write-behind write that the store does not have yet (in its slot)."""
        return self._pending + full_key[len(self.prefix) :]

    def tag(self, tag: str) -> str:
        """The current version of a tag."""
        return self._tag + braced(tag)

    def inbox(self, listener: str) -> str:
        """The event channel of one listener (``listener`` is its random id)."""
        return f"{self.channel}:{listener}"

    def droppable(self, name: str) -> bool:
        """Whether a key of the namespace is cache data ``clear`` drops: a value, a lease, a
        tag's version; never a write-behind queue or pending write (data, not cache)."""
        return name.startswith((self.prefix + "{", self._lease, self._tag))

    def writer(self, kind: str, writer: str) -> str:
        """A write-behind writer's key: ``kind`` is ``wb`` (its stream), ``wbdead`` (dead
        letters), ``wbflusher`` (the flusher lease), ``wbnewest`` (newest write per key) or
        ``wbepoch`` (the queue's epoch). A writer's keys share its hash tag."""
        if kind not in _WRITER_KINDS:
            raise ValueError(f"no write-behind key of kind {kind!r}")
        return f"{self.namespace}:{kind}:{braced(writer)}"


_WRITER_KINDS = frozenset({"wb", "wbdead", "wbflusher", "wbnewest", "wbepoch"})
