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
