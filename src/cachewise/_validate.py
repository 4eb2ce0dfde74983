"""Argument checks shared by every entry point: TTLs, sizes, callables.

Each check names the function or key it is checking, so the error says where the mistake is.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from .errors import ConfigTypeError, ConfigValueError


def ttl_seconds(ttl: Any, where: str, *, name: str = "ttl") -> float:
    """Return ``ttl`` as positive finite seconds, or raise naming ``where``.

    A TTL is mandatory wherever a value enters the cache: there is no way to cache forever.
    """
    if isinstance(ttl, timedelta):
        ttl = ttl.total_seconds()
    if ttl is None:
        raise ConfigTypeError(
            f"{name} is required for {where}: every cached value must expire "
            f"(pass {name}=<seconds> or a datetime.timedelta)"
        )
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise ConfigTypeError(
            f"{name} for {where} must be a number of seconds or a datetime.timedelta, "
            f"not {type(ttl).__name__} ({ttl!r})"
        )
    if not math.isfinite(ttl) or ttl <= 0:
        raise ConfigValueError(
            f"{name} for {where} must be a positive, finite number of seconds, got {ttl!r}"
        )
    return float(ttl)


def stale_seconds(stale_ttl: Any, where: str) -> float:
    """Return ``stale_ttl`` as seconds (``None`` means 0: no stale serving)."""
    if stale_ttl is None:
        return 0.0
    if isinstance(stale_ttl, (int, float, timedelta)) and not isinstance(stale_ttl, bool):
        seconds = stale_ttl.total_seconds() if isinstance(stale_ttl, timedelta) else stale_ttl
        if seconds == 0:
            return 0.0
    return ttl_seconds(stale_ttl, where, name="stale_ttl")


def fraction(value: Any, name: str, *, upper: float = 1.0) -> float:
    """Return ``value`` as a float in ``[0, upper]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (0.0 <= value <= upper):
        raise ConfigValueError(f"{name} must be between 0 and {upper}, got {value!r}")
    return float(value)


def replica_wait(value: Any, name: str) -> None:
    """A wait for a replica: seconds from 0 (no wait) to below 60 (a WAIT past that would
    outlast any socket timeout worth having)."""
    if not (isinstance(value, (int, float)) and 0 <= value < 60):
        raise ConfigValueError(f"{name} must be seconds from 0 (off) to below 60, got {value!r}")


def non_negative_int(value: Any, name: str) -> int:
    """Return ``value`` as an int ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ConfigValueError(f"{name} must be >= 0, got {value!r}")
    return value


def callable_(value: Any, name: str) -> None:
    """Raise unless ``value`` is callable."""
    if not callable(value):
        raise ConfigTypeError(f"{name} must be callable, got {type(value).__name__} ({value!r})")


def cache_key(key: Any, where: str = "key") -> str:
    """Return an explicit cache key, which must be a non-empty ``str``."""
    if not isinstance(key, str):
        raise ConfigTypeError(f"{where} must be a str, not {type(key).__name__} ({key!r})")
    if not key:
        raise ConfigValueError(f"{where} must not be empty")
    return key
