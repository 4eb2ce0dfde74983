"""The demo runs end to end and shows what it promises: loads and latencies, with and without."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_reports_one_load_with_cachewise() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cachewise", "demo", "--callers", "200", "--load-ms", "20",
         "--pool", "10", "--ttl", "0.2"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "[5/5]" in out and "backend:" in out
    rows = {line.split("  ")[1].strip(): line.split() for line in out.splitlines()
            if line.startswith("  ") and ("cache" in line)}  # fmt: skip
    assert rows["no cache (cold key)"][-3] == "200"
    assert rows["cachewise (cold key)"][-3] == "1"
    assert rows["cachewise at expiry"][-3] == "1"
    assert rows["cachewise + stale_ttl at expiry"][-3] == "1"


def test_demo_rejects_bad_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cachewise", "demo", "--callers", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "--callers" in result.stderr
