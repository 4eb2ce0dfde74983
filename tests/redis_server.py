"""The tests' redis-server: ``cachewise.testing.RedisServer`` (started and stopped by pid)."""

from cachewise.testing import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]
