"""Response caching for FastAPI (and Starlette) GET endpoints: ``@cache_response(cache, ttl=...)``.

::

    @app.get("/items/{item_id}")
    @cache_response(cache, ttl=60, stale_ttl=300, vary=("accept-language",))
    async def read_item(item_id: int) -> dict: ...

One entry per method, path, query string (its parameters sorted) and the values of the ``vary``
headers, loaded once however many requests arrive together (single-flight, in every process),
served stale while one refresh runs. Each response carries an ``ETag`` (a digest of its body):
a request whose ``If-None-Match`` names it gets ``304 Not Modified`` without a body. A request's
``Cache-Control: no-cache`` reloads the entry (and stores the new response); ``no-store`` calls
the endpoint and neither reads nor keeps anything. Responses that are not ``200``, that set a
cookie, or that say ``Cache-Control: no-store`` or ``private`` are returned and not cached.

The endpoint's return value becomes a response as FastAPI makes one of a plain value
(``jsonable_encoder``, then ``JSONResponse``); an endpoint that returns a ``Response`` is kept as
it is. The decorated endpoint keeps its own parameters (FastAPI still injects them) and gains
the request, if it does not take one already.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from fastapi.encoders import jsonable_encoder
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..cache import Cache
from ..errors import ConfigTypeError

__all__ = ["cache_response"]

#: Response headers never replayed from the cache (the server sets them per response, or they
#: are this response's own).
_DROPPED = frozenset({"set-cookie", "date", "server", "content-length", "etag", "vary"})
_REQUEST = "cachewise_request"


def cache_response(
    cache: Cache,
    *,
    ttl: Any,
    stale_ttl: Any = None,
    vary: Iterable[str] = (),
    namespace: str = "http",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a FastAPI endpoint (``async def`` or ``def``, under ``@app.get``) to cache its
    responses; ``vary`` names request headers whose values are part of the key."""
    if not isinstance(cache, Cache):
        raise ConfigTypeError(f"cache_response() needs a cachewise.Cache, got {cache!r}")
    if isinstance(vary, str):
        vary = (vary,)
    headers = tuple(sorted({h.lower() for h in vary}))

    @cache.cached(
        ttl=ttl,
        stale_ttl=stale_ttl,
        key=lambda key, respond: key,
        unless=lambda stored: stored is None,
    )
    async def load(key: str, respond: Callable[[], Any]) -> dict[str, Any] | None:
        response = await respond()
        return _stored(response)

    def decorate(endpoint: Callable[..., Any]) -> Callable[..., Any]:
        signature = _signature(endpoint)
        own = next((p.name for p in signature.parameters.values() if p.annotation is Request), None)
        # The response FastAPI injects for the endpoint to set headers, cookies or a status on.
        sub = next(
            (p.name for p in signature.parameters.values() if p.annotation is Response), None
        )
        where = f"{namespace}:{endpoint.__module__}.{endpoint.__qualname__}"

        @functools.wraps(endpoint)
        async def wrapper(*args: Any, **kwargs: Any) -> Response:
            request: Request = kwargs[own] if own else kwargs.pop(_REQUEST)

            async def respond() -> Response:
                if inspect.iscoroutinefunction(endpoint):
                    result = await endpoint(*args, **kwargs)
                else:
                    result = await run_in_threadpool(endpoint, *args, **kwargs)
                if isinstance(result, Response):
                    return result
                response = JSONResponse(jsonable_encoder(result))
                injected = kwargs.get(sub) if sub else None
                if isinstance(injected, Response):  # as FastAPI merges it for a plain value
                    response.headers.raw.extend(injected.headers.raw)
                    if injected.status_code:
                        response.status_code = injected.status_code
                return response

            if request.method not in ("GET", "HEAD"):
                return await respond()
            control = _directives(request.headers.get("cache-control", ""))
            if "no-store" in control:
                return await respond()
            key = _key(where, request, headers)
            fresh: list[Response] = []

            async def first() -> Response:  # the response the load made, not its copy
                fresh.append(await respond())
                return fresh[0]

            if "no-cache" in control:
                stored = await load.refresh(key, first)
            else:
                stored = await load(key, first)
            if stored is None:  # not cacheable: this caller's own response
                return fresh[0] if fresh else await respond()
            return _replayed(stored, request, headers)

        # FastAPI reads the parameters to inject from this signature (its annotations already
        # resolved: FastAPI would resolve them in this module, not the endpoint's), with the
        # request added if the endpoint does not take it.
        params = list(signature.parameters.values())
        if own is None:
            extra = inspect.Parameter(_REQUEST, inspect.Parameter.KEYWORD_ONLY, annotation=Request)
            at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
            params.insert(at, extra)
        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _signature(endpoint: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(endpoint, eval_str=True)
    except NameError:  # a name only the endpoint's enclosing function knows: left as written
        return inspect.signature(endpoint)


def _directives(value: str) -> set[str]:
    return {part.strip().split("=", 1)[0].lower() for part in value.split(",") if part.strip()}


def _key(where: str, request: Request, headers: tuple[str, ...]) -> str:
    query = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.multi_items()))
    varied = "|".join(f"{h}={request.headers.get(h, '')}" for h in headers)
    return f"{where}:{request.method}:{request.url.path}?{query}#{varied}"


def _stored(response: Response) -> dict[str, Any] | None:
    """What the cache keeps of a response, or None when it must not be shared."""
    if response.status_code != 200 or "set-cookie" in response.headers:
        return None
    if _directives(response.headers.get("cache-control", "")) & {"no-store", "private"}:
        return None
    body = getattr(response, "body", None)
    if not isinstance(body, bytes):  # a streaming response: nothing to keep
        return None
    kept = [[k, v] for k, v in response.headers.items() if k.lower() not in _DROPPED]
    etag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    return {"body": body, "headers": kept, "etag": etag, "type": response.media_type}


def _replayed(stored: dict[str, Any], request: Request, headers: tuple[str, ...]) -> Response:
    """The response a request gets from a stored one: 304 when its ``If-None-Match`` names
    the stored ETag."""
    extra = {"etag": stored["etag"]}
    if headers:
        extra["vary"] = ", ".join(headers)
    matches = {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}
    if stored["etag"] in matches or "*" in matches:
        return Response(status_code=304, headers=extra)
    response = Response(stored["body"], status_code=200, media_type=stored["type"])
    for name, value in stored["headers"]:
        if name.lower() != "content-type":
            response.headers.append(name, value)
    response.headers.update(extra)
    return response
