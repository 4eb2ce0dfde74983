from collections.abc import Callable
from typing import Any

class HitWrapper:
    """A cached function whose L1 hit runs compiled (``_codegen``)."""

    fallback: Callable[..., Any]
    def __init__(
        self, fallback: Callable[..., Any], nargs: int, now: Callable[[], float] | None
    ) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

def bind_entry(cls: type, /) -> None: ...
