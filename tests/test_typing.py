"""The decorators keep signatures for type checkers (ParamSpec), sync and async."""

from __future__ import annotations

from pathlib import Path

from mypy import api

HERE = Path(__file__).parent / "typecheck"


def check(name: str) -> tuple[str, int]:
    out, err, status = api.run(["--strict", "--no-incremental", str(HERE / name)])
    return out + err, status


def test_signatures_survive_the_decorator() -> None:
    out, status = check("usage.py")
    assert status == 0, out


def test_wrong_arguments_are_type_errors() -> None:
    out, status = check("misuse.py")
    assert status == 1
    assert 'incompatible type "str"; expected "int"' in out
    assert "Too many arguments" in out
