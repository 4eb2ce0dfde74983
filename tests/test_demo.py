"""The demo runs end to end and shows what it promises: loads and latencies, with and without."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any


def run_demo(env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-m", "cachewise", "demo", "--callers", "200", "--load-ms", "20",
         "--pool", "10", "--ttl", "0.2"],
        capture_output=True, text=True, timeout=120, check=True, env=env,
    ).stdout  # fmt: skip


def rows(out: str) -> dict[str, list[str]]:
    return {line.split("  ")[1].strip(): line.split() for line in out.splitlines()
            if line.startswith("  ") and ("cache" in line)}  # fmt: skip


def test_demo_in_process_without_redis() -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PATH"] = os.path.dirname(sys.executable)  # no redis-server on this PATH
    out = run_demo(env)
    assert "backend: in-process only" in out and "[5/5]" in out
    assert rows(out)["cachewise (cold key)"][-3] == "1"


def test_demo_with_a_redis_it_starts_itself(redis_server: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    out = run_demo(env)
    assert "redis-server started for this demo" in out and "[6/6]" in out
    assert rows(out)["cachewise, 4 processes (cold key)"][-3] == "1"


def test_demo_uses_redis_url(redis_server: Any) -> None:
    out = run_demo({**os.environ, "REDIS_URL": redis_server.url})
    assert "Redis at REDIS_URL" in out
    assert rows(out)["cachewise, 4 processes (cold key)"][-3] == "1"


def test_demo_runs_and_reports_one_load_with_cachewise() -> None:
    out = run_demo()
    assert "backend:" in out
    table = rows(out)
    assert table["no cache (cold key)"][-3] == "200"
    assert table["cachewise (cold key)"][-3] == "1"
    assert table["cachewise at expiry"][-3] == "1"
    assert table["cachewise + stale_ttl at expiry"][-3] == "1"


def test_demo_rejects_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachewise", "demo", "--callers", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "--callers" in result.stderr
