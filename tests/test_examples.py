"""The example apps under ``examples/``, through each framework's own test client."""

from __future__ import annotations

import os
from typing import Any

import pytest
from examples.store import UserStore

from cachewise import Cache


@pytest.fixture(params=["in-process", "redis"])
def cache(request: pytest.FixtureRequest, namespace: str) -> Any:
    if request.param == "in-process":
        return Cache(namespace=namespace)
    server = request.getfixturevalue("redis_server")
    return Cache(server.url, namespace=namespace)


def test_fastapi_app(cache: Cache) -> None:
    from examples.fastapi_app import create_app
    from fastapi.testclient import TestClient

    db = UserStore()
    with TestClient(create_app(cache, db)) as client:
        assert client.get("/users/1").json() == {"id": 1, "name": "Ada"}
        assert client.get("/users/1").json() == {"id": 1, "name": "Ada"}
        assert db.reads == 1  # the second request was a hit
        assert client.get("/users/9").status_code == 404
        assert client.put("/users/1", json={"name": "Grace"}).status_code == 200
        assert client.get("/users/1").json() == {"id": 1, "name": "Grace"}
        assert db.reads == 2  # the write-through left the new value in the cache
        assert client.get("/cache/stats").json()["loads"] == 2
        card = client.get("/users/1/card")
        assert card.json() == {"title": "Grace", "id": 1} and db.card_renders == 1
        assert client.get("/users/1/card").json() == card.json() and db.card_renders == 1
        etag = card.headers["etag"]
        assert client.get("/users/1/card", headers={"if-none-match": etag}).status_code == 304
        client.get("/users/1/card", headers={"cache-control": "no-cache"})
        assert db.card_renders == 2  # a request asked for a fresh one
        metrics = client.get("/metrics/").text
        assert 'cachewise_loads_total{namespace="' in metrics
        assert "cachewise_load_seconds_bucket" in metrics


def test_flask_app(cache: Cache) -> None:
    from examples.flask_app import create_app

    db = UserStore()
    client = create_app(cache, db).test_client()
    assert client.get("/users/1").get_json() == {"id": 1, "name": "Ada"}
    assert client.get("/users/1").get_json() == {"id": 1, "name": "Ada"}
    assert db.reads == 1
    assert client.put("/users/1", json={"name": "Grace"}).status_code == 200
    assert client.get("/users/1").get_json() == {"id": 1, "name": "Grace"}
    assert db.reads == 2  # invalidated by the update, loaded again once
    assert client.get("/users/9").status_code == 404
    cache.close(timeout=2)


def test_django_app() -> None:
    os.environ.pop("REDIS_URL", None)
    import django
    from django.test import Client
    from examples import django_app

    django.setup()
    client = Client()
    db = django_app.db
    before = db.reads
    assert client.get("/users/1").json() == {"id": 1, "name": "Ada"}
    assert client.get("/users/1").json() == {"id": 1, "name": "Ada"}
    assert db.reads == before + 1
    response = client.put("/users/1", data='{"name": "Grace"}', content_type="application/json")
    assert response.status_code == 200
    assert client.get("/users/1").json() == {"id": 1, "name": "Grace"}
    assert db.reads == before + 1  # write-through: the cache already holds the new value
    assert client.get("/users/9").status_code == 404
    first = client.get("/report")
    assert client.get("/report").content == first.content == b"users: 1"
    assert db.reports == 1  # cache_page, on the cachewise backend
