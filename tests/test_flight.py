"""A flight's waiting threads: they pass through its gate one after another once it settles,
and a waiter that times out leaves the others waiting."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cachewise._drivers import TIMED_OUT, Wait
from cachewise._flight import Flight


def _waiters(flight: Flight, count: int, timeout: float | None = None) -> tuple[list[Any], Any]:
    results: list[Any] = []
    lock = threading.Lock()

    def wait() -> None:
        try:
            outcome: Any = Wait(flight, timeout).run_sync()
        except BaseException as exc:  # the flight's error, raised in each waiter
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=wait) for _ in range(count)]
    for thread in threads:
        thread.start()
    return results, threads


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def test_every_waiting_thread_gets_the_value_once_it_is_settled_and_none_before() -> None:
    flight = Flight()
    results, threads = _waiters(flight, 50)
    time.sleep(0.1)
    assert results == []  # all blocked while the flight runs
    flight.set_result("v")
    _join(threads)
    assert results == ["v"] * 50
    assert flight.wait(0) is True  # after it settled: at once, the gate left open
    assert Wait(flight, None).run_sync() == "v"


def test_a_waiter_that_times_out_leaves_the_others_waiting() -> None:
    flight = Flight()
    patient, threads = _waiters(flight, 20)
    hasty, hasty_threads = _waiters(flight, 5, timeout=0.05)
    _join(hasty_threads)
    assert hasty == [TIMED_OUT] * 5
    assert patient == []
    flight.set_result(1)
    _join(threads)
    assert patient == [1] * 20


def test_the_loaders_error_is_raised_in_every_waiting_thread() -> None:
    flight = Flight()
    results, threads = _waiters(flight, 30)
    time.sleep(0.05)
    error = ValueError("load failed")
    flight.set_exception(error)
    _join(threads)
    assert len(results) == 30 and all(r is error for r in results)
    with pytest.raises(ValueError, match="load failed"):
        Wait(flight, 1).run_sync()


def test_a_flight_settles_once_whoever_settles_it() -> None:
    flight = Flight()
    results, threads = _waiters(flight, 10)
    time.sleep(0.05)
    settler = threading.Thread(target=flight.set_result, args=("first",))
    settler.start()
    settler.join()
    flight.set_result("second")  # ignored, and the gate is not released twice
    flight.set_exception(RuntimeError("late"))
    _join(threads)
    assert results == ["first"] * 10
    assert flight.wait(None) is True and flight.result() == "first"


def test_a_gate_not_passed_on_does_not_keep_the_others_waiting() -> None:
    """A waiter interrupted between taking the gate and passing it on (a KeyboardInterrupt)
    leaves it held: the others see the flight settled all the same, within a look."""
    flight = Flight()
    results, threads = _waiters(flight, 5)
    time.sleep(0.05)
    with flight._lock:  # settled as ``_finish`` does, but the gate kept, as by that waiter
        flight._value, flight._done = "v", True
    _join(threads)
    assert results == ["v"] * 5
    assert Wait(flight, 0.01).run_sync() == "v"
