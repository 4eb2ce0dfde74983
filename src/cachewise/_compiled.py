"""The optional C extension (``_speedups.c``), or None: built where a compiler was at hand when
the package was installed, and turned off by ``CACHEWISE_PURE_PYTHON=1``. Decided once, here, so
the entry's storage (``core``) and the compiled hit (``_codegen``) always agree."""

from __future__ import annotations

import os

__all__ = ["speedups"]

try:
    from . import _speedups as speedups
except ImportError:  # built without a C compiler: every part has a Python twin
    speedups = None  # type: ignore[assignment]
if os.environ.get("CACHEWISE_PURE_PYTHON", "").strip() not in ("", "0"):
    speedups = None  # type: ignore[assignment]
