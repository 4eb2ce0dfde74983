from collections.abc import Callable
from typing import Any

class HitWrapper:
    """A cached function whose L1 hit runs compiled (``_codegen``)."""

    fallback: Callable[..., Any]
    def __init__(
        self, wrapper: Callable[..., Any], nargs: int, now: Callable[[], float] | None
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

def bind_entry(cls: type, /) -> None: ...

class HitProbe:
    """The L1 hit of a generated wrapper as one call: its value, or ``miss``."""

    def __init__(
        self, wrapper: Callable[..., Any], nargs: int, now: Callable[[], float] | None, miss: Any
    ) -> None: ...
    def __call__(self, *args: Any) -> Any: ...
