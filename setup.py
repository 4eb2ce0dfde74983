"""The compiled hot paths (``cachewise._speedups``), built when a C compiler is at hand.

``optional=True``: without a compiler, or where the build fails, the package installs without
it and every cached function runs on its generated Python wrapper (``_codegen.py``).
Everything else about the package is declared in ``pyproject.toml``.
"""

from setuptools import Extension, setup

_PARTS = [
    "_speedups.c",
    "_speedups_hit.c",
    "_speedups_entry.c",
    "_speedups_bulk.c",
    "_speedups_lone.c",
    "_speedups_probe.c",
    "_speedups_front.c",
]

setup(
    ext_modules=[
        Extension(
            "cachewise._speedups",
            [f"src/cachewise/{part}" for part in _PARTS],
            depends=["src/cachewise/_speedups.h", "src/cachewise/_speedups_lone.h"],
            optional=True,
        ),
    ]
)
