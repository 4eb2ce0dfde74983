"""The hot rows of two commits, side by side: a refactoring must leave none of them slower.

    python benchmarks/side_by_side.py BEFORE [AFTER] [--rounds N]

BEFORE and AFTER are git revisions (AFTER defaults to the working tree). Each is checked out
into a temporary worktree; every round runs each side in a process of its own against one
``redis-server`` on loopback, alternating which goes first; the table shows each row's median
over the rounds and the after/before ratio. Rows are ``Cache`` calls timed in loops (best of
five loops per process), so the ratio is the cost of cachewise's own code around the same
Redis round trips.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Run in a child process with the side's ``src`` first on ``sys.path``: prints one JSON row.
_CHILD = r"""
import asyncio, json, sys, time
sys.path.insert(0, sys.argv[1])
from cachewise import Cache

url = sys.argv[2]
VALUE = {"id": 1, "name": "x" * 40, "tags": [1, 2, 3]}
keys = [f"u{i}" for i in range(100)]


def never():
    raise RuntimeError("not cached")


def best(fn, n, scale):
    fn()
    out = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - began) / n * scale)
    return min(out)


async def abest(fn, n, scale):
    await fn()
    out = []
    for _ in range(5):
        began = time.perf_counter()
        for _ in range(n):
            await fn()
        out.append((time.perf_counter() - began) / n * scale)
    return min(out)


l1 = Cache(url, namespace="sbs-l1")
l2 = Cache(url, namespace="sbs-l2", l1_maxsize=0)
l2.set("k", VALUE, ttl=3600)
for key in keys:
    l2.set(key, VALUE, ttl=3600)


@l1.cached(ttl=3600)
def l1_hit(x):
    return VALUE


@l2.cached(ttl=3600)
def l2_hit(x):
    return VALUE


l2_hit(1)
row = {
    "L1 hit, sync @cached, ns": best(lambda: l1_hit(1), 200_000, 1e9),
    "L2 hit, L1 off, get_or_load, us": best(
        lambda: l2.get_or_load("k", never, ttl=3600), 3000, 1e6
    ),
    "L2 hit, L1 off, @cached, us": best(lambda: l2_hit(1), 3000, 1e6),
    "get_many of 100, us": best(lambda: l2.get_many(keys), 500, 1e6),
    "set, us": best(lambda: l2.set("s", VALUE, ttl=3600), 2000, 1e6),
}


async def main():
    a1 = Cache(url, namespace="sbs-l1a")
    a2 = Cache(url, namespace="sbs-l2", l1_maxsize=0)

    @a1.cached(ttl=3600)
    async def al1_hit(x):
        return VALUE

    row["L1 hit, async @cached, ns"] = await abest(lambda: al1_hit(1), 100_000, 1e9)
    row["L2 hit, L1 off, async get_or_load, us"] = await abest(
        lambda: a2.aget_or_load("k", never, ttl=3600), 2000, 1e6
    )
    row["aget_many of 100, us"] = await abest(lambda: a2.aget_many(keys), 500, 1e6)
    a1.close()
    a2.close()


asyncio.run(main())
l1.close()
l2.close()
print(json.dumps(row))
"""


def _worktree(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(into), rev], check=True
    )
    return into / "src"


def _run(src: Path, url: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), url], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default=None, help="default: the working tree")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from cachewise.testing import RedisServer

    with tempfile.TemporaryDirectory(prefix="cachewise-sbs-") as tmp:
        made: list[Path] = []
        try:
            sides: dict[str, Path] = {}
            for name, rev in (("before", options.before), ("after", options.after)):
                if rev is None:
                    sides[name] = ROOT / "src"
                else:
                    made.append(Path(tmp) / name)
                    sides[name] = _worktree(rev, made[-1])
            runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            with RedisServer() as server:
                for i in range(options.rounds):
                    order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
                    for name in order:
                        runs[name].append(_run(sides[name], server.url))
        finally:
            for path in made:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                    check=False,
                )
    print(_table(runs, options))


def _table(runs: dict[str, list[dict[str, float]]], options: Any) -> str:
    after = options.after or "working tree"
    lines = [
        f"{options.rounds} rounds, medians; before = {options.before}, after = {after}",
        "",
        "| row | before | after | after / before |",
        "| --- | --- | --- | --- |",
    ]
    for row in runs["before"][0]:
        before = statistics.median(r[row] for r in runs["before"])
        now = statistics.median(r[row] for r in runs["after"])
        lines.append(f"| {row} | {before:.1f} | {now:.1f} | {now / before:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
