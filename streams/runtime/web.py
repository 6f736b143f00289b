"""Who may use a worker's HTTP server, and what it serves.

The server listens on ``RETENTION_WEB_HOST`` only. ``/metrics`` and ``/health/*`` are open
(Prometheus and the probes need no secret, and tell nothing about a customer); every other
request, including one for a path we do not serve, needs ``Authorization: Bearer <token>``
with ``RETENTION_API_TOKEN``: 401 and ``WWW-Authenticate: Bearer`` otherwise. With no token
set the private pages answer 403 to everyone (closed, not silently open). Faust's built-in
views (``/router``, ``/table``, ``/graph``, the statistics at ``/`` and ``/assignment``,
``/performance``) are not served: ``/table/users/<id>/`` would hand out raw user state.

Workers forward ``GET /users/{id}`` to the owner of the user's partition with the caller's
headers (Faust's router), and ask each other for ``/actions/stats`` with the token, so all
workers of an app share one token.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from aiohttp import web as aioweb
from faust.web.drivers.aiohttp import Web as AiohttpWeb

from streams.domain.events import ID_MAX_LENGTH
from streams.runtime import metrics
from streams.runtime.settings import Settings

log = logging.getLogger(__name__)

#: Pages anyone who can reach the port may read.
OPEN_PATHS = frozenset({"/metrics", "/health/live", "/health/ready"})
#: Largest request body (aiohttp's ``client_max_size``); our pages are GETs and read none.
MAX_REQUEST_BYTES = 16 * 1024

Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


class RetentionWeb(AiohttpWeb):
    """Faust's aiohttp server without Faust's built-in views: only the pages we register."""

    default_blueprints = ()
    production_blueprints = ()
    debug_blueprints = ()
    optional_blueprints = ()


def bearer_headers(token: str | None) -> dict[str, str]:
    """Headers of a request to a worker (another worker, the demo, the tests)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def web_options(settings: Settings) -> dict[str, Any]:
    """Faust's ``web_application_options``: the access check and the body size limit."""
    token = settings.bearer_token
    if token is None:
        log.warning("RETENTION_API_TOKEN is not set: every page but %s answers 403", ", ".join(sorted(OPEN_PATHS)))
    return {"middlewares": [access_middleware(token)], "client_max_size": MAX_REQUEST_BYTES}


def access_middleware(token: str | None) -> Callable[[aioweb.Request, Handler], Awaitable[aioweb.StreamResponse]]:
    """The aiohttp middleware that admits a request to a private page only with ``token``."""
    expected = token.encode() if token else None

    @aioweb.middleware
    async def access(request: aioweb.Request, handler: Handler) -> aioweb.StreamResponse:
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return _refuse("too_large", 413, f"request body over {MAX_REQUEST_BYTES} bytes")
        if request.path in OPEN_PATHS:
            return await handler(request)
        if expected is None:
            return _refuse("disabled", 403, "the API is disabled: the worker has no RETENTION_API_TOKEN")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            challenge = 'Bearer realm="retention-streams"' + (', error="invalid_token"' if given else "")
            return _refuse("unauthorized", 401, "a bearer token is required", {"WWW-Authenticate": challenge})
        return await handler(request)

    return access


def bounded_id(name: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Answer 400 when the path parameter ``name`` is not a contract id (1 to 128
    characters), before the request is forwarded or looked up."""

    def decorate(fun: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @wraps(fun)
        async def page(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            if not 1 <= len(request.match_info[name]) <= ID_MAX_LENGTH:
                metrics.HTTP_REFUSED.labels("bad_id").inc()
                return view.error(400, f"{name} must have 1 to {ID_MAX_LENGTH} characters")
            return await fun(view, request, *args, **kwargs)

        return page

    return decorate


def _refuse(reason: str, status: int, message: str, headers: dict[str, str] | None = None) -> aioweb.Response:
    metrics.HTTP_REFUSED.labels(reason).inc()
    return aioweb.json_response({"error": message}, status=status, headers=headers)
