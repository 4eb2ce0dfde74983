"""Keys that cannot escape or collide, credentials that never leak, ACL users and TLS."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachewise import Cache, CacheError
from cachewise.redis.keyspace import KeySpace
from cachewise.testing import free_port

from . import _workers

MakeCache = Callable[..., Cache]

AWKWARD = ["a b", "line\nbreak", "tab\t", "ünïcødé ✓", "*", "?", "[x]", ":", "a:b", "#", "#tag",
           "ns#lease:x", "lease:{x}", "{x}", "}", "{", "x}{y", "{#0}", "\x00nul", "k" * 10_000,
           " "]  # fmt: skip


def test_awkward_explicit_keys_round_trip_and_never_collide(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache(l1_maxsize=0)
    for i, key in enumerate(AWKWARD):
        a.set(key, i, ttl=60)
    for i, key in enumerate(AWKWARD):
        assert b.get(key) == i, key  # through Redis, each key its own
    assert b.get_many(AWKWARD) == {key: i for i, key in enumerate(AWKWARD)}
    assert len({a._engine.explicit_target(k).full_key for k in AWKWARD}) == len(AWKWARD)
    assert all(len(a._engine.explicit_target(k).full_key) < 200 for k in AWKWARD)
    a.invalidate("*")  # a key, not a pattern
    assert b.get("*") is None and b.get("?") == AWKWARD.index("?")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1), st.text(min_size=1))
def test_keys_stay_in_their_namespace(first: str, second: str) -> None:
    """No explicit key of one namespace equals a key of another, or the library's own keys."""
    a = Cache(namespace="app").__dict__["_engine"]
    b = Cache(namespace="app.b").__dict__["_engine"]
    full = a.explicit_target(first).full_key
    assert full.startswith("app:")
    assert full != b.explicit_target(second).full_key
    assert not full.startswith(("app#", "app.b:"))
    if first != second:
        assert full != a.explicit_target(second).full_key


def test_decorated_function_keys_with_awkward_arguments(make_cache: MakeCache) -> None:
    a, b = make_cache(), make_cache(l1_maxsize=0)
    seen: list[Any] = []

    @a.cached(ttl=60)
    def f(x: Any) -> Any:
        seen.append(x)
        return x

    for value in AWKWARD:
        assert f(value) == value
    assert len(seen) == len(AWKWARD)
    assert len({f.key(v) for v in AWKWARD}) == len(AWKWARD)
    assert all(f.key(v).startswith(f"{a.namespace}:") for v in AWKWARD)
    for value in AWKWARD:  # another process reads the same entries from Redis
        assert b.get_or_load(KeySpace(a.namespace).name_of(f.key(value)), _never, ttl=60) == value


def _never() -> Any:
    raise AssertionError("must be a hit")


SECRET = "s3cr3t-Pa55word"


def test_credentials_never_appear_in_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cachewise")
    url = f"redis://app:{SECRET}@127.0.0.1:{free_port()}/0"
    cache = Cache(url, namespace="leak", socket_timeout=0.2, connect_timeout=0.2)
    assert cache.get_or_load("k", lambda: "v", ttl=60) == "v"
    cache.set("k2", 1, ttl=60)
    cache.invalidate("k")
    errors = [repr(cache), str(cache.stats())]
    with pytest.raises(CacheError) as raised:
        Cache(f"redis://app:{SECRET}@[bad", namespace="leak")
    errors.append(str(raised.value))
    cache.close(timeout=1)
    text = caplog.text + "".join(errors)
    assert "Redis" in caplog.text  # something was logged...
    assert SECRET not in text  # ...but never the password


def acl_user(admin: Any, name: str, pattern: str) -> str:
    """An ACL user (password ``SECRET``) allowed every command on the keys and channels that
    ``pattern`` matches, and nothing else."""
    user = name[:60]
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{SECRET}"], keys=[pattern], channels=[pattern],
        commands=["+@all"],
    )  # fmt: skip
    return user


def test_an_acl_user_connects_and_a_wrong_password_fails_open(
    redis_server: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin = redis_server.client()
    user = acl_user(admin, f"u-{namespace}", f"{namespace}*")
    good = Cache(f"redis://{user}:{SECRET}@127.0.0.1:{redis_server.port}/0", namespace=namespace)
    bad = Cache(f"redis://{user}:wrong@127.0.0.1:{redis_server.port}/0", namespace=namespace)
    try:
        good.set("k", "v", ttl=60)
        assert admin.get(f"{namespace}:{{k}}") is not None
        assert bad.get_or_load("k2", lambda: "from origin", ttl=60) == "from origin"
        assert bad.stats()["redis_errors"] >= 1
        assert "wrong" not in caplog.text and SECRET not in caplog.text
    finally:
        good.close(timeout=1)
        bad.close(timeout=1)
        admin.acl_deluser(user)


def test_a_user_refused_the_event_channel_keeps_nothing_in_l1(
    redis_server: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An ACL user without the namespace's channel cannot hear other processes' changes: it
    says so, and holds nothing read from Redis in L1 until the channel is granted."""
    admin = redis_server.client()
    user = f"nochan-{namespace}"[:60]
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{SECRET}"], keys=[f"{namespace}*"],
        commands=["+@all"], reset_channels=True,
    )  # fmt: skip
    url = f"redis://{user}:{SECRET}@127.0.0.1:{redis_server.port}/0"
    writer = Cache(redis_server.url, namespace=namespace)
    reader = Cache(url, namespace=namespace)
    try:
        writer.set("k", "old", ttl=60)
        assert reader.get_or_load("k", lambda: "loaded", ttl=60) == "old"
        writer.set("k", "new", ttl=60)  # the reader cannot hear this
        assert reader.get_or_load("k", lambda: "loaded", ttl=60) == "new"
        assert reader.stats()["l1_size"] == 0
        assert "refuses this user the channel" in caplog.text
        admin.acl_setuser(user, enabled=True, channels=[f"{namespace}*"])
        listener = reader._engine.backend.listener  # type: ignore[union-attr]
        assert listener is not None and listener.ready.wait(10)
        assert reader.get_or_load("k", lambda: "loaded", ttl=60) == "new"
        assert reader.stats()["l1_size"] == 1
    finally:
        writer.close(timeout=1)
        reader.close(timeout=1)
        admin.acl_deluser(user)


def test_a_user_without_pubsub_numsub_still_reaches_every_process(
    redis_server: Any, namespace: str
) -> None:
    """Sending events to each listener's own channel needs ``PUBSUB NUMSUB``; a user who may
    not run it sends them to the channel every listener hears instead, and writes still work."""
    admin = redis_server.client()
    user = f"nonumsub-{namespace}"[:60]
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{SECRET}"], keys=[f"{namespace}*"],
        channels=[f"{namespace}*"], commands=["+@all", "-pubsub"],
    )  # fmt: skip
    url = f"redis://{user}:{SECRET}@127.0.0.1:{redis_server.port}/0"
    writer, reader = Cache(url, namespace=namespace), Cache(redis_server.url, namespace=namespace)
    try:
        assert reader.get_or_load("k", lambda: "old", ttl=60) == "old"
        writer.get("~warm-up")  # both listening
        listener = writer._engine.backend.listener  # type: ignore[union-attr]
        assert listener is not None and listener.ready.wait(10)
        writer.set("k", "new", ttl=60)
        assert writer.stats()["redis_errors"] == 0
        deadline = time.monotonic() + 5
        while reader.get_or_load("k", lambda: "loaded", ttl=60) != "new":
            assert time.monotonic() < deadline, "the reader kept its old copy"
            time.sleep(0.01)
    finally:
        writer.close(timeout=1)
        reader.close(timeout=1)
        admin.acl_deluser(user)


@pytest.fixture
def tls_server() -> Iterator[tuple[int, Path]]:
    """redis-server speaking TLS only, on a free loopback port, with a throwaway CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the TLS test")
    tmp = Path(tempfile.mkdtemp(prefix="cachewise-tls-"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext",
            "-out", "server.pem")  # fmt: skip
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp),
         "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        probe = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(tmp / "ca.pem"))
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None:
                    pytest.skip("this redis-server refuses the TLS options (built without TLS)")
                assert time.monotonic() < deadline, "the TLS redis-server did not answer"
                time.sleep(0.05)
        probe.close()
        yield port, tmp / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_tls_with_rediss_url(tls_server: tuple[int, Path]) -> None:
    port, ca = tls_server
    cache = Cache(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", namespace="tls")
    other = Cache(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", namespace="tls", l1_maxsize=0)
    try:
        cache.set("k", {"over": "tls"}, ttl=60)
        assert other.get("k") == {"over": "tls"}
        assert other.stats()["l2_hits"] == 1 and other.stats()["redis_errors"] == 0
    finally:
        cache.close(timeout=1)
        other.close(timeout=1)


def test_an_acl_of_the_namespace_alone_covers_every_feature(
    redis_server: Any, namespace: str
) -> None:
    """Every key and channel cachewise uses is under ``<namespace>:``: a user granted only
    ``~<namespace>:*`` and ``&<namespace>:*`` reads, loads under leases, tags, invalidates
    and writes behind without one refusal."""
    admin = redis_server.client()
    user = acl_user(admin, f"ns-{namespace}", f"{namespace}:*")
    url = f"redis://{user}:{SECRET}@127.0.0.1:{redis_server.port}/0"
    store = _workers.use_store(redis_server.url, namespace)  # the "database": not the ACL's
    a, get_row, save = _workers.rows_cache(url, namespace)
    b = Cache(url, namespace=namespace, l1_maxsize=0)
    try:

        @a.cached(ttl=60, tags=lambda user_id: [f"user:{user_id}"])
        def get_user(user_id: int) -> str:
            return f"user {user_id}"

        assert get_row(1) is None
        save(1, "ada")
        assert get_row(1) == "ada"
        assert a.flush(timeout=10).written == 1
        assert store.hget(f"{namespace}-store:rows", "1") == b"ada"
        assert get_user(1) == "user 1"
        a.set("k", "v", ttl=60)
        assert b.get_many(["k", "absent"]) == {"k": "v"}
        assert b.get_or_load("loaded", lambda: "x", ttl=60) == "x"
        a.invalidate_tags("user:1")
        a.invalidate("k")
        assert b.get("k") is None
        for cache in (a, b):
            assert cache.stats()["redis_errors"] == 0, cache.stats()
        assert not list(admin.scan_iter(f"{namespace}#*"))
    finally:
        a.close(timeout=1)
        b.close(timeout=1)
        admin.acl_deluser(user)
