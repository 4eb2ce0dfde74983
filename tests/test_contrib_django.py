"""The Django backend (``cachewise.contrib.django``) against Django's own cache test suite.

Django's source distribution ships its tests; ``BaseCacheTests`` (``tests/cache/tests.py``) is
bound to this backend the way Django binds it to its Redis backend (the same settings helper,
the cull caches left out, which Redis does not do either), and run by Django's ``runtests.py``
on a real ``redis-server``, and once in-process. The source of the installed Django version is
downloaded once into ``.venv`` (pip, from the package index the set-up uses).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import django
import pytest

BINDING = """\
import os

from django.test import TestCase, override_settings

from .tests import BaseCacheTests, caches_setting_for_tests, redis_excluded_caches

BACKEND = {"BACKEND": "cachewise.contrib.django.CachewiseCache",
           "LOCATION": os.environ["CACHEWISE_LOCATION"]}


@override_settings(CACHES=caches_setting_for_tests(base=BACKEND, exclude=redis_excluded_caches))
class CachewiseCacheTests(BaseCacheTests, TestCase):
    pass
"""


def django_tests() -> Path:
    """Django's ``tests`` directory of the installed version (downloaded once)."""
    version = django.__version__
    root = Path(sys.prefix) / "django-tests" / version
    tests = root / f"django-{version}" / "tests"
    if not (tests / "runtests.py").exists():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             "-d", str(root), f"django=={version}"],
            check=True, timeout=600,
        )  # fmt: skip
        with tarfile.open(root / f"django-{version}.tar.gz") as archive:
            members = [m for m in archive.getmembers() if "/tests/" in m.name]
            archive.extractall(root, members=members, filter="data")
    (tests / "cache" / "tests_cachewise.py").write_text(BINDING)
    return tests


@pytest.mark.parametrize("where", ["redis", "in-process"])
def test_djangos_own_cache_tests_pass(redis_server: Any, where: str) -> None:
    tests = django_tests()
    env = {
        **os.environ,
        "CACHEWISE_LOCATION": redis_server.url if where == "redis" else "",
        "PYTHONPATH": str(tests),
    }
    run = subprocess.run(
        [sys.executable, "runtests.py", "cache.tests_cachewise", "--parallel", "1",
         "--settings", "test_sqlite", "--noinput"],
        cwd=tests, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = run.stdout + run.stderr
    ran = re.search(r"Ran (\d+) tests", out)
    assert run.returncode == 0 and ran is not None, out[-6000:]
    skipped = re.search(r"skipped=(\d+)", out)
    passed = int(ran.group(1)) - (int(skipped.group(1)) if skipped else 0)
    assert passed >= 51, out[-3000:]


@pytest.mark.parametrize("where", ["redis", "in-process"])
def test_the_async_forms_and_what_differs(redis_server: Any, where: str, namespace: str) -> None:
    """Django's ``a…`` forms; ``timeout=None`` is ``FOREVER``; ``close()`` keeps the cache."""
    from cachewise.contrib.django import FOREVER, CachewiseCache

    location = redis_server.url if where == "redis" else ""
    backend = CachewiseCache(location, {"OPTIONS": {"namespace": namespace}, "TIMEOUT": 60})

    async def main() -> None:
        await backend.aset("a", {"x": 1})
        assert await backend.aget("a") == {"x": 1}
        assert await backend.aadd("a", 2) is False and await backend.aadd("b", 2) is True
        assert await backend.aget_or_set("c", lambda: [3]) == [3]
        assert await backend.aincr("b", 5) == 7
        assert await backend.ahas_key("c") is True
        assert await backend.adelete("c") is True and await backend.adelete("c") is False
        assert await backend.aget_many(["a", "b", "zz"]) == {"a": {"x": 1}, "b": 7}

    asyncio.run(main())
    backend.set("forever", 1, timeout=None)
    if where == "redis":
        full = backend._cache._target(backend.make_key("forever")).full_key
        ttl = redis_server.client().pttl(full) / 1000
        assert FOREVER * 0.9 - 60 < ttl <= FOREVER  # less the TTL jitter (up to a tenth)
    backend.close()
    assert backend.get("forever") == 1  # Django closes caches after each request: still usable


def _backend(location: str, namespace: str, **options: Any) -> Any:
    from cachewise.contrib.django import CachewiseCache

    return CachewiseCache(location, {"OPTIONS": {"namespace": namespace, **options}, "TIMEOUT": 60})


@pytest.mark.parametrize("where", ["redis", "in-process"])
def test_incr_of_an_integer_is_atomic(redis_server: Any, where: str, namespace: str) -> None:
    """Threads adding to one counter lose no increment (a read and a write again did), and
    with Redis the counter keeps its timeout (as ``INCRBY`` does with Django's Redis backend)."""
    import threading

    backend = _backend(redis_server.url if where == "redis" else "", namespace)
    backend.set("n", 0)

    def add() -> None:
        for _ in range(150):
            backend.incr("n")

    threads = [threading.Thread(target=add) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.get("n") == 900
    assert backend.decr("n", 1000) == -100 and backend.incr("n", -1) == -101
    assert asyncio.run(backend.aincr("n", 11)) == -90 and asyncio.run(backend.adecr("n")) == -91
    with pytest.raises(ValueError, match="not found"):
        backend.incr("missing")
    if where == "redis":
        full = backend._cache._target(backend.make_key("n")).full_key
        redis_server.client().pexpire(full, 5_000)
        backend.incr("n")
        assert 0 < redis_server.client().pttl(full) <= 5_000  # not the default timeout again


def test_incr_reaches_every_processes_l1(redis_server: Any, namespace: str) -> None:
    """A counter held in another cache's L1 is dropped there once it is added to in Redis."""
    from .test_concurrency import wait_until

    writer = _backend(redis_server.url, namespace)
    reader = _backend(redis_server.url, namespace, l1_maxsize=100)  # a Cache of its own
    assert reader._cache is not writer._cache
    writer.set("n", 1)
    assert reader.get("n") == 1  # now in the reader's L1
    assert writer.incr("n", 4) == 5
    wait_until(lambda: reader.get("n") == 5)


def test_what_a_script_cannot_add_to_is_read_and_written(redis_server: Any, namespace: str) -> None:
    """A float, an integer past what Lua holds exactly, and an integer pickled by an earlier
    release are added to as Django's base backend does (and the last is an integer after)."""
    import pickle

    backend = _backend(redis_server.url, namespace)
    backend.set("f", 1.5)
    assert backend.incr("f") == 2.5
    backend.set("big", 2**53 - 1)
    assert backend.incr("big", 2) == 2**53 + 1 and backend.get("big") == 2**53 + 1
    backend.set("small", -10)
    assert backend.incr("small", 2**53 + 1) == 2**53 - 9  # a delta a double rounds
    made = backend.make_key("old")
    backend._cache.set(made, pickle.dumps(41), ttl=60)  # how an earlier release stored it
    assert backend.incr("old") == 42
    assert backend._cache.get(made) == 42  # stored as an integer now: the next one is atomic


def test_touch_sets_the_lifetime_where_the_value_is(redis_server: Any, namespace: str) -> None:
    """``touch`` with Redis rewrites the value's deadlines and expiry in place: the value
    (pickled, tagged by no one) reads back the same, an increment racing with it is not undone,
    and another cache's L1 copy is dropped, so it does not expire there at the old time."""
    import threading

    from .test_concurrency import wait_until

    backend = _backend(redis_server.url, namespace)
    reader = _backend(redis_server.url, namespace, l1_maxsize=100)
    backend.set("obj", {"x": b"\xff bytes", "y": [1.5, None]}, timeout=2)
    assert reader.get("obj") == {"x": b"\xff bytes", "y": [1.5, None]}
    full = backend._cache._target(backend.make_key("obj")).full_key
    assert backend.touch("obj", 300) is True
    assert 290_000 < redis_server.client().pttl(full) <= 300_000
    assert backend.get("obj") == {"x": b"\xff bytes", "y": [1.5, None]}
    time.sleep(2.1)  # past the old deadline: fresh by the new one, here and in the reader
    assert backend.get("obj") == {"x": b"\xff bytes", "y": [1.5, None]}
    wait_until(lambda: reader.get("obj") == {"x": b"\xff bytes", "y": [1.5, None]})
    assert backend.touch("missing") is False
    assert asyncio.run(backend.atouch("obj", 100)) is True
    assert 90_000 < redis_server.client().pttl(full) <= 100_000
    assert backend.touch("obj", 0) is True and backend.get("obj") is None  # as Django: expired

    backend.set("n", 0)
    stop = threading.Event()

    def touching() -> None:
        while not stop.is_set():
            backend.touch("n", 60)

    toucher = threading.Thread(target=touching)
    toucher.start()
    try:
        for _ in range(300):
            backend.incr("n")
    finally:
        stop.set()
        toucher.join()
    assert backend.get("n") == 300
