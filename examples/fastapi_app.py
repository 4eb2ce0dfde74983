"""FastAPI: cached async reads, write-through updates, a cached response (ETag, 304,
Cache-Control), Prometheus metrics at /metrics, the cache closed with the app.

Run: ``REDIS_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:app``
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from prometheus_client import CollectorRegistry, make_asgi_app

from cachewise import Cache
from cachewise.contrib.fastapi import cache_response
from cachewise.contrib.prometheus import instrument

from .store import UserStore


def create_app(cache: Cache, db: UserStore) -> FastAPI:
    @cache.cached(ttl=60, stale_ttl=300)
    async def load_user(user_id: int) -> dict[str, Any] | None:
        return await db.aget(user_id)

    @cache.write_through(
        load_user,
        args=lambda user_id, data: user_id,
        value=lambda user_id, data: {"id": user_id, **data},
    )
    async def save_user(user_id: int, data: dict[str, Any]) -> None:
        await db.aput(user_id, data)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await cache.aclose()  # drains write-behind queues, stops the listener

    app = FastAPI(lifespan=lifespan)
    registry = CollectorRegistry()  # the app's own (prometheus_client.REGISTRY in most apps)
    instrument(cache, registry)
    app.mount("/metrics", make_asgi_app(registry))  # Prometheus scrapes this

    @app.get("/users/{user_id}")
    async def read_user(user_id: int) -> dict[str, Any]:
        user = await load_user(user_id)  # None is cached too: a missing row is not reloaded
        if user is None:
            raise HTTPException(404)
        return user

    @app.put("/users/{user_id}")
    async def update_user(user_id: int, data: dict[str, Any]) -> dict[str, Any]:
        await save_user(user_id, data)
        return {"id": user_id, **data}

    @app.get("/users/{user_id}/card")
    @cache_response(cache, ttl=30, stale_ttl=300, vary=("accept-language",))
    async def user_card(user_id: int) -> dict[str, Any]:
        db.card_renders += 1  # an expensive render: once per user and language
        user = await load_user(user_id)
        return {"title": (user or {}).get("name", "unknown"), "id": user_id}

    @app.get("/cache/stats")
    def stats() -> dict[str, Any]:
        return cache.stats()

    return app


app = create_app(Cache(os.environ.get("REDIS_URL"), namespace="example"), UserStore())
