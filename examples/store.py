"""A stand-in for a database: a dict that counts how often it is read."""

from __future__ import annotations

import asyncio
from typing import Any


class UserStore:
    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {1: {"id": 1, "name": "Ada"}}
        self.reads = 0
        self.card_renders = 0  # the FastAPI example's cached response
        self.reports = 0  # the Django example's cached page

    def get(self, user_id: int) -> dict[str, Any] | None:
        self.reads += 1
        return self.rows.get(user_id)

    def put(self, user_id: int, data: dict[str, Any]) -> None:
        self.rows[user_id] = {"id": user_id, **data}

    async def aget(self, user_id: int) -> dict[str, Any] | None:
        await asyncio.sleep(0)  # an async driver would await the database here
        return self.get(user_id)

    async def aput(self, user_id: int, data: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self.put(user_id, data)
