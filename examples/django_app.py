"""Django: a cached view helper, and cachewise as Django's cache backend (``cache_page``), in a
one-file project (settings, URLs and views in one module).

Run: ``REDIS_URL=redis://localhost:6379/0 django-admin runserver --pythonpath . \
--settings examples.django_app``. In a real project, make the ``Cache`` once in a module
(for example ``myproject/cache.py``) and decorate functions where they are defined.
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.cache import cache_page

from cachewise import Cache

from .store import UserStore

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only",
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        # Django's own cache API (cache_page, django.core.cache.cache) on cachewise too.
        CACHES={
            "default": {
                "BACKEND": "cachewise.contrib.django.CachewiseCache",
                "LOCATION": os.environ.get("REDIS_URL", ""),
                "OPTIONS": {"namespace": "example-django"},
            }
        },
    )

cache = Cache(os.environ.get("REDIS_URL"), namespace="example")
db = UserStore()


@cache.cached(ttl=60)
def load_user(user_id: int) -> dict[str, Any] | None:
    return db.get(user_id)


@cache.write_through(
    load_user,
    args=lambda user_id, data: user_id,
    value=lambda user_id, data: {"id": user_id, **data},
)
def save_user(user_id: int, data: dict[str, Any]) -> None:
    db.put(user_id, data)


def user_view(request: HttpRequest, user_id: int) -> HttpResponse:
    if request.method == "PUT":
        data = json.loads(request.body)
        save_user(user_id, data)
        return JsonResponse({"id": user_id, **data})
    user = load_user(user_id)
    if user is None:
        raise Http404
    return JsonResponse(user)


@cache_page(30)
def report_view(request: HttpRequest) -> HttpResponse:
    db.reports += 1  # an expensive page: rendered once per 30 s, whoever asks
    return HttpResponse(f"users: {len(db.rows)}")


def stats_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(cache.stats())


urlpatterns = [
    path("users/<int:user_id>", user_view),
    path("report", report_view),
    path("cache/stats", stats_view),
]
