"""The only module that reads time: a clock is any zero-argument callable returning seconds.

Monotonic by default, because in-process freshness must not jump with wall-clock changes; tests
inject ``cachewise.testing.FakeClock`` so expiry is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

monotonic: Clock = time.monotonic
