"""``cachewise`` (or ``python -m cachewise``): look at and act on a namespace from a shell.

Commands take a Redis URL (any form ``Cache`` takes: a node of a cluster, ``redis+sentinel://``)
and ``--namespace``. What they read is what Redis holds, for the whole fleet: the processes
listening, the namespace's keys by kind (a bounded ``SCAN``), and every write-behind writer's
queue (found by its keys, so no writer function needs importing). Acting on entries goes through
``Cache`` (``invalidate``, ``invalidate-tag``, ``clear``), so every process' L1 learns of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import redis
import redis.cluster

from .cache import Cache
from .errors import CacheError
from .redis import OUTAGE_ERRORS, REDIS_ERRORS, text
from .redis.keyspace import KeySpace, unbraced
from .redis.scripts import SCRIPTS
from .writebehind.dead_letters import letter

#: The kinds of a namespace's keys, by what follows ``<namespace>:`` (``{`` is a value).
_KINDS = ("lease", "wbpending", "tagv", "wbdead", "wbflusher", "wbnewest", "wbepoch", "wb")


class Ops:
    """One namespace on one Redis, as the commands see it."""

    def __init__(self, url: str, namespace: str) -> None:
        self.cache = Cache(url, namespace=namespace, l1_maxsize=0)
        backend = self.cache._engine.backend
        assert backend is not None
        self.client = backend.sync_client()
        self.space = KeySpace(namespace)
        self.client.ping()  # a wrong URL is an error here, not in the middle of a command

    def close(self) -> None:
        self.cache.close(timeout=5)

    def scan(self, pattern: str, limit: int, kind: str | None = None) -> Iterator[str]:
        """Keys matching ``pattern`` (every master of a cluster), at most ``limit``."""
        for n, key in enumerate(self.client.scan_iter(match=pattern, count=1000, _type=kind)):
            if n >= limit:
                return
            yield text(key)

    def writers(self) -> list[str]:
        """The write-behind writers (queue partitions) of the namespace, by their streams."""
        found = set()
        for kind in ("wb", "wbdead"):
            prefix = f"{self.space.namespace}:{kind}:"
            for key in self.scan(prefix + "*", 100_000, "stream"):
                found.add(unbraced(key[len(prefix) :]))
        return sorted(found)

    def now_ms(self) -> int:
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def listening(self) -> int:
        """The processes subscribed to the namespace's event channel: ``PUBSUB NUMSUB``, summed
        by redis-py over every node of a cluster (where listeners keep no registry and
        subscribe on any node); the registry of listeners when the user may not run it."""
        where = {}
        if isinstance(self.client, redis.cluster.RedisCluster):  # replicas hold listeners too
            where = {"target_nodes": redis.cluster.RedisCluster.ALL_NODES}
        try:
            counts = self.client.pubsub_numsub(self.space.channel, **where)
        except redis.exceptions.ResponseError:  # NOPERM included
            return int(self.client.zcard(self.space.channel))
        return int(sum(n for _, n in counts))

    def stats(self, limit: int) -> dict[str, Any]:
        kinds = dict.fromkeys(("value", *_KINDS), 0)
        scanned = 0
        for key in self.scan(self.space.prefix + "*", limit):
            scanned += 1
            rest = key[len(self.space.prefix) :]
            kind = "value" if rest.startswith("{") else rest.split(":", 1)[0]
            if kind in kinds:
                kinds[kind] += 1
        return {
            "namespace": self.space.namespace,
            "processes_listening": self.listening(),
            "keys": {k: v for k, v in kinds.items() if v},
            "keys_scanned": scanned,
            "scan_complete": scanned < limit,
            "write_behind": self.write_behind_status(),
        }

    def write_behind_status(self) -> list[dict[str, Any]]:
        now = self.now_ms()
        rows = []
        for writer in self.writers():
            stream = self.space.writer("wb", writer)
            depth = int(self.client.xlen(stream)) if self.client.exists(stream) else 0
            pending = 0
            if depth:
                groups = self.client.xinfo_groups(stream)
                pending = sum(int(g["pending"]) for g in groups)
            oldest = self.client.xrange(stream, "-", "+", count=1) if depth else []
            age = (now - int(text(oldest[0][0]).split("-")[0])) / 1000 if oldest else None
            holder = self.client.get(self.space.writer("wbflusher", writer))
            rows.append({
                "writer": writer,
                "queued": depth,
                "being_written": pending,
                "oldest_age_s": None if age is None else max(0.0, round(age, 3)),
                "dead_letters": int(self.client.xlen(self.space.writer("wbdead", writer))),
                "flusher": text(holder) if holder is not None else None,
            })  # fmt: skip
        return rows

    def dead_letters(self, writer: str | None) -> list[dict[str, Any]]:
        letters = []
        for name in [writer] if writer else self.writers():
            dead = self.space.writer("wbdead", name)
            for ident, fields in self.client.xrange(dead, "-", "+"):
                found, decoded = letter(name, ident, fields)
                call = {"args": list(found.args), "kwargs": found.kwargs} if decoded else None
                letters.append({
                    "writer": name, "id": found.id, "key": found.key,
                    "attempts": found.attempts, "error": found.error, "call": call,
                })  # fmt: skip
        return letters

    def _letter_ids(self, dead: str, ids: list[str]) -> list[str]:
        """``ids``, or every dead letter's of the stream ``dead`` when none are given."""
        return ids or [text(i) for i, _ in self.client.xrange(dead, "-", "+")]

    def replay(self, writer: str, ids: list[str]) -> int:
        stream, dead = self.space.writer("wb", writer), self.space.writer("wbdead", writer)
        ids = self._letter_ids(dead, ids)
        if not ids:
            return 0
        return int(self.client.eval(SCRIPTS["replay"], 2, stream, dead, *ids))

    def drop(self, writer: str, ids: list[str]) -> int:
        dead = self.space.writer("wbdead", writer)
        ids = self._letter_ids(dead, ids)
        return int(self.client.xdel(dead, *ids)) if ids else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachewise", description="Look at and act on a cachewise namespace in Redis."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("url", help="the Redis URL (a node of a cluster, redis+sentinel://…)")
        p.add_argument("--namespace", "-n", required=True, help="the cache's namespace")
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        return p

    stats = command("stats", "processes listening, keys by kind, write-behind queues")
    stats.add_argument("--scan-limit", type=int, default=1_000_000, help="keys to count at most")
    inv = command("invalidate", "drop entries by key, in Redis and in every process' L1")
    inv.add_argument("keys", nargs="+", metavar="KEY")
    tag = command("invalidate-tag", "drop every entry carrying one of the tags")
    tag.add_argument("tags", nargs="+", metavar="TAG")
    clear = command("clear", "drop every entry of the namespace (never write-behind queues)")
    clear.add_argument("--yes", action="store_true", help="confirm: this drops every entry")
    wb = command("write-behind", "write-behind queues")
    wb.add_argument("action", choices=["status"])
    dl = command("dead-letters", "write-behind writes that failed every try")
    dl.add_argument("action", choices=["list", "replay", "drop"])
    dl.add_argument("--writer", help="the writer (as `write-behind status` names it)")
    dl.add_argument("ids", nargs="*", metavar="ID", help="dead letter ids (default: all)")
    from ._demo import add_demo

    add_demo(sub)
    return parser


def _print(args: argparse.Namespace, result: Any, as_text: Callable[[Any], str]) -> None:
    print(json.dumps(result, indent=2, default=str) if args.json else as_text(result))


def _stats_text(s: dict[str, Any]) -> str:
    lines = [
        f"namespace {s['namespace']}: {s['processes_listening']} processes listening",
        "keys: " + (", ".join(f"{k} {v}" for k, v in s["keys"].items()) or "none")
        + ("" if s["scan_complete"] else f" (first {s['keys_scanned']} scanned)"),
    ]  # fmt: skip
    return "\n".join([*lines, _status_text(s["write_behind"])])


def _status_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "write-behind: no queues"
    out = [f"{'writer':<50} {'queued':>7} {'writing':>8} {'oldest s':>9} {'dead':>5}  flusher"]
    for r in rows:
        age = "-" if r["oldest_age_s"] is None else f"{r['oldest_age_s']:.1f}"
        out.append(f"{r['writer']:<50} {r['queued']:>7} {r['being_written']:>8} {age:>9} "
                   f"{r['dead_letters']:>5}  {r['flusher'] or '-'}")  # fmt: skip
    return "\n".join(out)


def _letters_text(letters: list[dict[str, Any]]) -> str:
    if not letters:
        return "no dead letters"
    return "\n".join(
        f"{d['writer']} {d['id']} key={d['key']} attempts={d['attempts']} call={d['call']} "
        f"error={d['error']}"
        for d in letters
    )


def _run(ops: Ops, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.command == "stats":
        _print(args, ops.stats(args.scan_limit), _stats_text)
    elif args.command == "invalidate":
        # A key as given to ``cache.set``, or a full Redis key as ``f.key(...)`` prints it.
        space = ops.space
        keys = [space.name_of(k) if k.startswith(space.prefix + "{") else k for k in args.keys]
        held = sum(int(ops.client.exists(ops.cache._target(k).full_key)) for k in keys)
        ops.cache.invalidate(*keys)
        _print(args, {"dropped": held}, lambda r: f"dropped {r['dropped']} entries held in Redis")
    elif args.command == "invalidate-tag":
        ops.cache.invalidate_tags(*args.tags)
        _print(args, {"tags": args.tags}, lambda r: "invalidated tags " + ", ".join(r["tags"]))
    elif args.command == "clear":
        if not args.yes:
            parser.error(f"clear drops every entry of namespace {args.namespace!r}: add --yes")
        _print(args, {"dropped": ops.cache.clear()}, lambda r: f"dropped {r['dropped']} keys")
    elif args.command == "write-behind":
        _print(args, ops.write_behind_status(), _status_text)
    elif args.action == "list":
        _print(args, ops.dead_letters(args.writer), _letters_text)
    else:
        if not args.writer:
            parser.error(f"dead-letters {args.action} needs --writer (see write-behind status)")
        done = (ops.replay if args.action == "replay" else ops.drop)(args.writer, args.ids)
        verb = "replayed" if args.action == "replay" else "dropped"
        _print(args, {verb: done}, lambda r: f"{verb} {done} dead letters")


def main(argv: list[str] | None = None) -> int:
    """The console script; returns the exit status (2: bad input or Redis unreachable)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args, parser)
    try:
        ops = Ops(args.url, args.namespace)
    except (CacheError, ValueError) as exc:
        parser.error(str(exc))
    except OUTAGE_ERRORS as exc:
        print(f"cachewise: cannot reach Redis at {args.url}: {exc}", file=sys.stderr)
        return 2
    try:
        _run(ops, args, parser)
    except REDIS_ERRORS as exc:
        print(f"cachewise: Redis failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        ops.close()
    return 0
