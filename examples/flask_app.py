"""Flask: cached sync reads and an invalidation hook on updates.

Run: ``REDIS_URL=redis://localhost:6379/0 flask --app examples.flask_app run``
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, abort, request

from cachewise import Cache

from .store import UserStore


def create_app(cache: Cache, db: UserStore) -> Flask:
    app = Flask(__name__)

    @cache.cached(ttl=60)
    def load_user(user_id: int) -> dict[str, Any] | None:
        return db.get(user_id)

    @cache.invalidates(load_user, args=lambda user_id, data: user_id)
    def save_user(user_id: int, data: dict[str, Any]) -> None:
        db.put(user_id, data)  # once it returns, every process drops its copy

    @app.get("/users/<int:user_id>")
    def read_user(user_id: int) -> dict[str, Any]:
        user = load_user(user_id)
        if user is None:
            abort(404)
        return user

    @app.put("/users/<int:user_id>")
    def update_user(user_id: int) -> dict[str, Any]:
        data = request.get_json()
        save_user(user_id, data)
        return {"id": user_id, **data}

    @app.get("/cache/stats")
    def stats() -> dict[str, Any]:
        return cache.stats()

    return app


app = create_app(Cache(os.environ.get("REDIS_URL"), namespace="example"), UserStore())
