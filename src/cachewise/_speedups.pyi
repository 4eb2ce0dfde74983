from collections.abc import Callable
from typing import Any

class HitWrapper:
    """A cached function whose L1 hit runs compiled (``_codegen``)."""

    fallback: Callable[..., Any]
    served: int
    def __init__(
        self, wrapper: Callable[..., Any], nargs: int, now: Callable[[], float] | None
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

VERSION: int

def bind_entry(cls: type, /) -> None: ...
def fresh_values(
    keys: list[str],
    raws: list[bytes | None],
    now_ms: float,
    found: dict[str, Any],
    kept: list[tuple[str, list[Any]]] | None,
    unpackb: Callable[..., Any],
    kwnames: tuple[str, ...],
    kwvalues: tuple[Any, ...],
    format: int,
    checked: Callable[[Any], Any],
    /,
) -> list[str] | None: ...

class HitProbe:
    """The L1 hit of a generated wrapper as one call: its value, or ``miss``."""

    served: int
    def __init__(
        self, wrapper: Callable[..., Any], nargs: int, now: Callable[[], float] | None, miss: Any
    ) -> None: ...
    def __call__(self, *args: Any) -> Any: ...

class EntryFields:
    """What an L1 entry holds, deadlines and counters as C numbers (``core.Entry``, whose
    pure-Python twin ``core._Fields`` is what type checkers see: its fields and signature)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None: ...

def bind_lone(
    parts: dict[str, Any], /
) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any], Callable[..., Any]]: ...
def bind_front(cache_type: type, fallback: Callable[..., Any], /) -> Callable[..., Any]: ...
