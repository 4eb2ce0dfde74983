"""Throwaway ``redis-server`` processes for tests: one server, a cluster, Sentinel; each on
free loopback ports, started here and stopped by its own pids (never by name). Public through
``cachewise.testing``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` bound to 127.0.0.1 on a free port, without persistence.

    Stopped with ``stop()`` (or as a context manager) by its own pid, never by name.
    """

    def __init__(self, *extra: str, binary: str | None = None, port: int | None = None) -> None:
        path = binary or shutil.which("redis-server")
        if path is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="cachewise-redis-")
        self.args = [
            path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.dir, *extra,
        ]  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._start()

    def _start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.stop()
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def client(self) -> Any:
        """A ``redis.Redis`` connected to this server."""
        import redis

        return redis.Redis(port=self.port)

    def kill(self) -> None:
        """SIGKILL the server (its pid): connections are refused until ``restart()``."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Start a new, empty server on the same port."""
        self.kill()
        self._start()

    def pause(self) -> None:
        """SIGSTOP the server: connections hang (a network partition, a stuck host)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot stop
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (``port + 10000``) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _replication(node: RedisServer) -> dict[str, Any]:
    """``INFO replication`` of one node."""
    client = node.client()
    try:
        return dict(client.info("replication"))
    finally:
        client.close()


class LocalCluster:
    """A Redis Cluster on loopback: ``masters`` x (1 + ``replicas``) ``redis-server`` processes
    (each a ``RedisServer``, stopped by its pid), joined by ``redis-cli --cluster create``, with
    ``cluster-node-timeout`` ``node_timeout_ms`` so a failover takes about a second; ``extra``
    options are given to every node."""

    def __init__(
        self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000, *extra: str
    ) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        self.nodes: list[RedisServer] = []
        try:
            options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                       "--cluster-node-timeout", str(node_timeout_ms),
                       "--repl-diskless-sync-delay", "0",
                       # A master's offset moves (and the cluster hears of its replicas) within
                       # a second, not after ten.
                       "--repl-ping-replica-period", "1", *extra]  # fmt: skip
            for _ in range(masters * (1 + replicas)):
                self.nodes.append(RedisServer(*options, port=_cluster_port()))
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.stop()
            raise
        self.url = self.nodes[0].url

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and knows every slot."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                if node.proc.poll() is not None:
                    continue
                client = node.client()
                try:
                    info = client.cluster("info")
                    states.append(info.get("cluster_state") == "ok"
                                  and int(info.get("cluster_slots_ok", 0)) == 16384)  # fmt: skip
                except Exception:
                    states.append(False)
                finally:
                    client.close()
            if states and all(states) and self._replicas_online():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not become ok")
            time.sleep(0.1)

    def _replicas_online(self) -> bool:
        """Whether every running master's replicas finished their first sync (a replica that
        has not cannot be promoted), and every running node's ``CLUSTER SLOTS`` lists them (it
        leaves out a replica whose replication offset it has not heard of yet, so a client
        asking that node would not know it; nodes hear of it at different times)."""
        expected: dict[int, int] = {}
        for node in self.masters():
            info = _replication(node)
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if any(replica.get("state") != "online" for replica in replicas):
                return False
            expected[node.port] = len(replicas)
        for node in self.nodes:
            if node.proc.poll() is not None:
                continue
            client = node.client()
            try:
                slots = client.execute_command("CLUSTER", "SLOTS")
            finally:
                client.close()
            for entry in slots:
                if len(entry) - 3 < expected.get(int(entry[2][1]), 0):
                    return False
        return True

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The (first) replica of ``master``."""
        port = int(_replication(master)["slave0"]["port"])
        return next(node for node in self.nodes if node.port == port)

    def masters(self) -> list[RedisServer]:
        """The running nodes that are masters now."""
        found = []
        for node in self.nodes:
            if node.proc.poll() is None and _replication(node).get("role") == "master":
                found.append(node)
        return found

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalSentinel:
    """A master, its replica and one Sentinel watching them as ``service``, on loopback (each
    stopped by its pid), with ``down-after-milliseconds`` ``down_after_ms`` so a failover takes
    about a second. ``url`` is the ``redis+sentinel://`` URL of the service."""

    def __init__(self, service: str = "main", down_after_ms: int = 1000) -> None:
        import redis

        self.service = service
        self.servers: list[RedisServer] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="cachewise-sentinel-")
        try:
            master = RedisServer("--repl-diskless-sync-delay", "0")
            self.servers.append(master)
            self.servers.append(
                RedisServer("--replicaof", "127.0.0.1", str(master.port),
                            "--repl-diskless-sync-delay", "0")
            )  # fmt: skip
            self.port = free_port()
            conf = os.path.join(self.dir, "sentinel.conf")
            with open(conf, "w") as out:
                out.write(
                    f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
                    f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
                    f"sentinel failover-timeout {service} {max(3000, 3 * down_after_ms)}\n"
                )
            binary = shutil.which("redis-server")
            assert binary is not None
            self.proc = subprocess.Popen(
                [binary, conf, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            self.sentinel: Any = redis.Redis(
                port=self.port, socket_timeout=1, decode_responses=True
            )
            self._wait(self._ready, "the sentinel did not see the master and its replica")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/{service}"

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except Exception:  # the sentinel starting, or the switch under way
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(what)
            time.sleep(0.1)

    def _ready(self) -> bool:
        """The sentinel knows the master and a replica that has synced and is up."""
        replicas = self.sentinel.execute_command("SENTINEL", "REPLICAS", self.service)
        return any(r["flags"] == "slave" and r.get("master-link-status") == "ok" for r in replicas)

    def master(self) -> RedisServer:
        """The server the sentinel names as the master now."""
        _host, port = self.sentinel.execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
        )
        return next(server for server in self.servers if server.port == int(port))

    def failover(self) -> RedisServer:
        """``SENTINEL FAILOVER``: the replica is promoted; returns once the sentinel names it
        and sees the old master as its replica again."""
        before = self.master()
        self.sentinel.execute_command("SENTINEL", "FAILOVER", self.service)
        self._wait(lambda: self.master() is not before, "no failover")
        after = self.master()

        def following() -> bool:  # asked of the old master: the sentinel hears it ~20 s later
            info = _replication(before)
            return info.get("master_port") == after.port and info["master_link_status"] == "up"

        self._wait(following, "the old master did not follow the new one")
        return after

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalSentinel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
