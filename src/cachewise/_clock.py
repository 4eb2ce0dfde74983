"""The only module that reads time: a clock is any zero-argument callable returning seconds.

Monotonic by default, because in-process freshness must not jump with wall-clock changes. A
``Cache`` has two, both injected: ``clock`` (the time entries live on) and ``timer`` (the time
deadlines of waits are kept on: lease waits, the breaker's reset, timed flushes, write-behind
backoff), so that tests move either with ``cachewise.testing.FakeClock`` instead of sleeping.
The estimate of the Redis server's clock reads ``monotonic`` itself: it is matched against
Redis' real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

monotonic: Clock = time.monotonic
