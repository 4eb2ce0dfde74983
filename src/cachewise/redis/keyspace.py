"""The one builder of a namespace's Redis key and channel names (the layout is described in
``lua``): every other module asks it, none builds a name by hand or slices one apart."""

from __future__ import annotations


class KeySpace:
    """The names of one namespace: its values, what cachewise keeps about them, its channels."""

    __slots__ = ("channel", "namespace", "prefix")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        #: What every value's key starts with: ``<namespace>:``.
        self.prefix = f"{namespace}:" if namespace else ""
        #: The channel every listener of the namespace hears; also the registry's name.
        self.channel = f"{namespace}#events"

    def entry(self, name: str) -> str:
        """The key of the value called ``name`` in this namespace."""
        return self.prefix + name

    def name_of(self, full_key: str) -> str:
        """The name within the namespace of a value's key (``entry``'s inverse)."""
        return full_key[len(self.prefix) :]

    def lease(self, full_key: str) -> str:
        """The lease of the process loading a value."""
        return f"{self.namespace}#lease:{self.name_of(full_key)}"

    def key_of_lease(self, lease: str) -> str:
        """The value a lease is for (``lease``'s inverse)."""
        return self.entry(lease[len(self.namespace) + len("#lease:") :])

    def pending(self, full_key: str) -> str:
        """A value's write-behind write that the store does not have yet."""
        return f"{self.namespace}#wbpending:{self.name_of(full_key)}"

    def tag(self, tag: str) -> str:
        """The current version of a tag."""
        return f"{self.namespace}#tagv:{tag}"

    def inbox(self, listener: str) -> str:
        """The event channel of one listener (``listener`` is its random id)."""
        return f"{self.channel}:{listener}"

    def writer(self, kind: str, writer: str) -> str:
        """A write-behind writer's key: ``kind`` is ``wb`` (its stream), ``wbdead`` (dead
        letters), ``wbflusher`` (the flusher lease), ``wbnewest`` (newest write per key) or
        ``wbepoch`` (the queue's epoch)."""
        if kind not in _WRITER_KINDS:
            raise ValueError(f"no write-behind key of kind {kind!r}")
        return f"{self.namespace}#{kind}:{writer}"


_WRITER_KINDS = frozenset({"wb", "wbdead", "wbflusher", "wbnewest", "wbepoch"})
