"""FastAPI response caching (``cachewise.contrib.fastapi``) through the framework's own test
client: one load per key, ETag and 304, Cache-Control from the request, what is never cached;
in-process and with Redis (two apps standing for two processes)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pydantic
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient

from cachewise import Cache, ConfigTypeError
from cachewise.contrib.fastapi import cache_response


class Item(pydantic.BaseModel):
    id: int
    name: str


def make_app(cache: Cache, calls: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    @cache_response(cache, ttl=60, vary=("accept-language",))
    async def read_item(item_id: int, q: str = "") -> Item:
        calls.append(f"item {item_id} {q}")
        return Item(id=item_id, name=f"n{item_id}{q}")

    @app.get("/sync/{n}")
    @cache_response(cache, ttl=60)
    def sync_endpoint(n: int, request: Request) -> dict[str, Any]:
        calls.append(f"sync {n} {request.url.path}")
        return {"n": n}

    @app.get("/cookie")
    @cache_response(cache, ttl=60)
    async def with_cookie(response: Response) -> dict[str, str]:
        calls.append("cookie")
        response.set_cookie("session", "s")
        return {"ok": "yes"}

    @app.get("/raw")
    @cache_response(cache, ttl=60)
    async def raw() -> Response:
        calls.append("raw")
        return Response(b"plain", media_type="text/plain", headers={"x-made": "here"})

    @app.get("/missing")
    @cache_response(cache, ttl=60)
    async def missing() -> Response:
        calls.append("missing")
        return Response(status_code=404)

    @app.get("/private")
    @cache_response(cache, ttl=60)
    async def private() -> Response:
        calls.append("private")
        return Response(b"mine", headers={"cache-control": "private"})

    return app


def test_responses_are_cached_per_path_query_and_vary(where: Callable[..., Cache]) -> None:
    calls: list[str] = []
    cache = where()
    client = TestClient(make_app(cache, calls))
    first = client.get("/items/1?q=a")
    assert first.status_code == 200 and first.json() == {"id": 1, "name": "n1a"}
    again = client.get("/items/1?q=a")
    assert again.json() == first.json() and calls == ["item 1 a"]
    assert again.headers["etag"] == first.headers["etag"]
    assert again.headers["content-type"] == "application/json"
    assert again.headers["vary"] == "accept-language"
    client.get("/items/1?q=b")
    client.get("/items/2?q=a")
    client.get("/items/1?q=a", headers={"accept-language": "fr"})
    assert calls == ["item 1 a", "item 1 b", "item 2 a", "item 1 a"]
    assert client.get("/sync/3").json() == {"n": 3}
    assert client.get("/sync/3").json() == {"n": 3}
    assert calls[-1] == "sync 3 /sync/3" and calls.count("sync 3 /sync/3") == 1
    raw = client.get("/raw")
    assert client.get("/raw").text == "plain" and calls.count("raw") == 1
    assert raw.headers["x-made"] == "here" and raw.headers["content-type"].startswith("text/plain")
    if cache._engine.backend is not None:  # another process serves it from Redis
        other_calls: list[str] = []
        other = TestClient(make_app(where(), other_calls))
        assert other.get("/items/1?q=a").json() == first.json() and other_calls == []


def test_etag_and_if_none_match(where: Callable[..., Cache]) -> None:
    calls: list[str] = []
    client = TestClient(make_app(where(), calls))
    etag = client.get("/items/5").headers["etag"]
    not_modified = client.get("/items/5", headers={"if-none-match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    changed = client.get("/items/5", headers={"if-none-match": '"other"'})
    assert changed.status_code == 200 and calls == ["item 5 "]


def test_request_cache_control(where: Callable[..., Cache]) -> None:
    calls: list[str] = []
    client = TestClient(make_app(where(), calls))
    client.get("/items/7")
    client.get("/items/7", headers={"cache-control": "no-store"})
    assert calls == ["item 7 ", "item 7 "]  # no-store: through, nothing read
    client.get("/items/7", headers={"cache-control": "no-cache"})
    assert len(calls) == 3  # no-cache: reloaded...
    client.get("/items/7")
    assert len(calls) == 3  # ...and stored


def test_what_is_never_cached(where: Callable[..., Cache]) -> None:
    calls: list[str] = []
    client = TestClient(make_app(where(), calls))
    for _ in range(2):
        assert client.get("/cookie").cookies.get("session") == "s"
        assert client.get("/missing").status_code == 404
        assert client.get("/private").text == "mine"
    assert calls == ["cookie", "missing", "private"] * 2


def test_one_load_for_requests_that_arrive_together(where: Callable[..., Cache]) -> None:
    calls: list[str] = []
    gate = threading.Event()
    app = FastAPI()
    cache = where()

    @app.get("/slow")
    @cache_response(cache, ttl=60)
    def slow() -> dict[str, int]:
        calls.append("slow")
        gate.wait(10)
        return {"v": 1}

    client = TestClient(app)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(client.get("/slow").json()))
               for _ in range(8)]  # fmt: skip
    for t in threads:
        t.start()
    threading.Timer(0.3, gate.set).start()
    for t in threads:
        t.join(20)
    assert results == [{"v": 1}] * 8 and calls == ["slow"]


def test_bad_input() -> None:
    with pytest.raises(ConfigTypeError, match=r"needs a cachewise\.Cache"):
        cache_response(object(), ttl=60)  # type: ignore[arg-type]
    with pytest.raises(ConfigTypeError):
        cache_response(Cache(), ttl="soon")
