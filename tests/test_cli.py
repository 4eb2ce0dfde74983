"""The operations CLI (``cachewise`` / ``python -m cachewise``) against a real Redis: what it
reports is what the namespace holds, what it does every process' cache learns."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from cachewise import MISSING
from cachewise.cli import main
from cachewise.testing import RedisServer

from . import _workers
from .conftest import caches
from .test_concurrency import wait_until
from .test_writebehind_redis import stop_flusher

WRITER = "tests._workers.store_row"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_stats_invalidate_and_clear(
    redis_server: Any, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_server.url
    with caches(url, namespace=namespace) as make:
        app, other = make(), make()
        app.set("plain", 1, ttl=60)
        app.set("tagged", 2, ttl=60)

        @app.cached(ttl=60, tags=["users"])
        def user(n: int) -> int:
            return n

        user(1)
        assert other.get("plain") == 1  # another process holds it in its L1 now
        wait_until(lambda: run(capsys, "stats", url, "-n", namespace)["processes_listening"] >= 2)
        stats = run(capsys, "stats", url, "-n", namespace)
        assert stats["keys"]["value"] == 3 and stats["keys"]["tagv"] == 1
        assert stats["scan_complete"] and stats["write_behind"] == []

        assert run(capsys, "invalidate", url, "-n", namespace, "plain")["dropped"] == 1
        wait_until(lambda: other.get("plain") is None)  # every L1 learned it
        full = user.key(1)  # the form f.key() prints is accepted too
        assert run(capsys, "invalidate", url, "-n", namespace, full)["dropped"] == 1
        user(2)
        run(capsys, "invalidate-tag", url, "-n", namespace, "users")
        assert user.peek(2) is MISSING
    with caches(url, namespace=namespace) as make:
        app = make()
        app.set("again", 1, ttl=60)
        with pytest.raises(SystemExit):  # refused without --yes: nothing dropped
            main(["clear", url, "-n", namespace])
        assert app.get("again") == 1
        assert run(capsys, "clear", url, "-n", namespace, "--yes")["dropped"] >= 1
        assert run(capsys, "stats", url, "-n", namespace)["keys"].get("value", 0) == 0


def test_write_behind_status_and_dead_letters(
    namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with RedisServer() as server:
        _workers.use_store(server.url, namespace)
        cache, get_row, save = _workers.rows_cache(
            server.url, namespace, write_behind_retries=1, write_behind_backoff=0.01
        )
        try:
            _workers._store["fail"].add(13)
            save(13, "d13")
            cache.flush(timeout=10)
            stop_flusher(cache)
            save(14, "d14")  # queued, nobody flushing
            [row] = run(capsys, "write-behind", server.url, "-n", namespace, "status")
            assert row["writer"] == WRITER and row["queued"] == 1 and row["dead_letters"] == 1
            assert row["oldest_age_s"] is not None and row["oldest_age_s"] >= 0
            [letter] = run(capsys, "dead-letters", server.url, "-n", namespace, "list")
            assert letter["key"] == get_row.key(13) and letter["attempts"] == 2
            assert letter["call"] == {"args": [13, "d13"], "kwargs": {}}
            assert "cannot write 13" in letter["error"]

            _workers._store["fail"].clear()
            out = run(capsys, "dead-letters", server.url, "-n", namespace, "replay",
                      "--writer", WRITER)  # fmt: skip
            assert out == {"replayed": 1}
            [row] = run(capsys, "write-behind", server.url, "-n", namespace, "status")
            assert row["queued"] == 2 and row["dead_letters"] == 0
            cache._queues[0].stopped = False
            cache._queues[0].ensure_flusher()
            assert cache.flush(timeout=10).pending == 0
            assert _workers._store["client"].hget(f"{namespace}-store:rows", "13") == b"d13"

            _workers._store["fail"].add(15)
            save(15, "d15")
            cache.flush(timeout=10)
            assert len(run(capsys, "dead-letters", server.url, "-n", namespace, "list")) == 1
            dropped = run(capsys, "dead-letters", server.url, "-n", namespace, "drop",
                          "--writer", WRITER)  # fmt: skip
            assert dropped == {"dropped": 1}
            assert run(capsys, "dead-letters", server.url, "-n", namespace, "list") == []
            with pytest.raises(SystemExit):  # replay and drop name their writer
                main(["dead-letters", server.url, "-n", namespace, "replay"])
        finally:
            cache.close(timeout=5)


def test_bad_input_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer() as server:
        port = server.port
    assert main(["stats", f"redis://127.0.0.1:{port}/0", "-n", "shop"]) == 2
    assert "cannot reach Redis" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stats", "redis://127.0.0.1:6379/0", "-n", "no spaces"])
    assert "namespace must be" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["stats", "ftp://nowhere", "-n", "shop"])
    assert "ftp://nowhere" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["stats", "invalidate", "invalidate-tag", "clear",
                                     "write-behind", "dead-letters", "demo"])  # fmt: skip
def test_every_command_has_help(command: str) -> None:
    out = subprocess.run([sys.executable, "-m", "cachewise", command, "--help"],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert out.stdout.startswith("usage: cachewise " + command)
