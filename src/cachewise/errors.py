"""The error types of cachewise: every error it raises is a ``CacheError``.

Configuration mistakes also subclass the builtin a Python user would catch (``TypeError`` or
``ValueError``), so ``except ValueError`` around a bad TTL keeps working.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "ConfigError",
    "ConfigTypeError",
    "ConfigValueError",
    "KeyBuildError",
    "LoaderResultError",
    "RedisUnavailable",
    "SerializationError",
    "ValueTooLarge",
    "WriteBehindFull",
    "WriteBehindNotDurable",
    "WriteBehindUnavailable",
]


class CacheError(Exception):
    """Base class of every error cachewise raises itself."""


class ConfigError(CacheError):
    """A cache, decorator or call was configured wrongly; nothing was cached."""


class ConfigTypeError(ConfigError, TypeError):
    """A configuration value has the wrong type (a TTL given as a string, a non-callable loader)."""


class ConfigValueError(ConfigError, ValueError):
    """A configuration value has the right type but an invalid value (a zero or infinite TTL)."""


class KeyBuildError(ConfigTypeError):
    """An argument has no stable representation to build a cache key from."""


class LoaderResultError(CacheError):
    """A bulk loader did not return a value for every key it was asked for."""


class WriteBehindFull(CacheError):
    """The in-memory write-behind queue is full and the cache was told to raise, not block."""


class WriteBehindUnavailable(CacheError):
    """Redis failed while a durable write-behind was being queued: the write is not confirmed.

    Raised rather than logged: a write the caller believes queued but that was lost is the one
    failure write-behind exists to prevent.
    """


class WriteBehindNotDurable(ConfigValueError):
    """The Redis holding the write-behind queue may evict it (an ``allkeys-*`` policy): no write
    is queued there unless the cache was told to accept that risk."""


class RedisUnavailable(CacheError):
    """Redis could not be reached and the call is fail-closed: nothing was loaded or cached."""


class SerializationError(CacheError, TypeError):
    """A value the configured serializer cannot encode; nothing was stored."""


class ValueTooLarge(CacheError, ValueError):
    """A value over ``max_value_bytes`` where it must be shared (a durable write-behind)."""


def describe(exc: BaseException) -> str:
    """An exception as a log line shows it: its type and the server's own message (``NOGROUP
    …``, ``OOM …``, ``NOSCRIPT …``). redis-py's ``repr`` of a server error names only its type."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
