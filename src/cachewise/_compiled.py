"""The optional C extension (``_speedups.c``), or None: built where a compiler was at hand when
the package was installed, and turned off by ``CACHEWISE_PURE_PYTHON=1``. Decided once, here, so
the entry's storage (``core``) and the compiled hit (``_codegen``) always agree."""

from __future__ import annotations

import os
import warnings

__all__ = ["VERSION", "speedups"]

#: The version of ``_speedups.c`` this Python code works with (its ``VERSION``).
VERSION = 9

try:
    from . import _speedups as speedups
except ImportError:  # built without a C compiler: every part has a Python twin
    speedups = None  # type: ignore[assignment]
if os.environ.get("CACHEWISE_PURE_PYTHON", "").strip() not in ("", "0"):
    speedups = None  # type: ignore[assignment]
elif speedups is not None and getattr(speedups, "VERSION", 0) != VERSION:
    # An extension built from other C than this Python (an editable install not rebuilt).
    warnings.warn(
        f"cachewise: its compiled extension ({speedups.__file__}) was built from another "
        "version of the package and is not used; reinstall the package to rebuild it",
        RuntimeWarning,
        stacklevel=2,
    )
    speedups = None  # type: ignore[assignment]
