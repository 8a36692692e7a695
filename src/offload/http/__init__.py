"""offload's HTTP face: one ASGI app serving the JSON API, the Cloud Tasks v2 REST surface,
the dashboard and Prometheus metrics, deny-by-default (``pip install 'offload[http]'``).

:func:`create_app` is the only entry point; ``offload serve`` runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import App
    from .limits import FailureLimiter

__all__ = ["create_app"]

#: the parts, each a module of this package with ``routes(ctx)``; a part not written yet is
#: simply absent
PARTS = ("api", "cloudtasks", "dashboard", "metrics")


def create_app(
    app: App,
    *,
    tokens: list[str] | None = None,
    no_auth: bool = False,
    parts: tuple[str, ...] = PARTS,
    auth_limit: FailureLimiter | None = None,
) -> Any:
    """The ASGI app serving ``app``. ``tokens``: the accepted bearer tokens (default:
    ``$OFFLOAD_API_TOKENS``, comma-separated); with none, ``no_auth=True`` is required.
    ``parts``: which of :data:`PARTS` to serve (a worker's ``--metrics-port`` serves only
    ``("metrics",)``); every one sits behind the same authentication. ``auth_limit``: how
    wrong tokens are slowed down per client address (default: 10 at once, then one every
    6 s; see :mod:`offload.http.limits`)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ..errors import ConfigError
    from .auth import AuthMiddleware, auth_routes
    from .context import HttpContext
    from .limits import FailureLimiter

    if tokens is None:
        tokens = [t.strip() for t in os.environ.get("OFFLOAD_API_TOKENS", "").split(",")]
    accepted = frozenset(t for t in tokens if t)
    if not accepted and not no_auth:
        raise ConfigError(
            "no API token configured: set OFFLOAD_API_TOKENS (comma-separated) or pass "
            "tokens=; to serve without authentication on loopback only, pass no_auth=True "
            "(offload serve --no-auth)"
        )
    ctx = HttpContext(
        app,
        frozenset() if no_auth else accepted,
        no_auth,
        limiter=auth_limit if auth_limit is not None else FailureLimiter(),
    )

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    routes: list[Any] = [Route("/healthz", healthz), *auth_routes()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ConfigError(f"create_app: parts={sorted(unknown)} unknown; choose from {PARTS}")
    for part in parts:
        try:
            module = importlib.import_module(f"{__name__}.{part}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{part}":
                continue
            raise
        routes.extend(module.routes(ctx))
    server = Starlette(
        routes=routes,
        lifespan=functools.partial(_lifespan, app),
        middleware=[Middleware(AuthMiddleware, ctx=ctx)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    server.state.offload = ctx
    return server


@contextlib.asynccontextmanager
async def _lifespan(app: App, server: Any) -> AsyncIterator[None]:
    """Open a broker on the server's own loop, so async sends (``POST /api/v1/tasks``,
    ``send_async``) go straight to it instead of through a thread and the App's portal.
    A broker that cannot be reached now is not fatal: requests then take the App's
    synchronous facade, which retries the connection on every call."""
    from ..errors import BrokerError

    loop = asyncio.get_running_loop()
    registry = app.registry
    broker = registry.new_broker()
    try:
        await broker.open()
        await broker.declare(list(registry.queues.values()))
    except BrokerError as exc:
        logging.getLogger("offload.http").warning(
            "broker not reachable at start (%s); serving through the App's facade", exc
        )
        yield
        return
    registry.attach(loop, broker)
    try:
        yield
    finally:
        registry.detach(loop)
        await broker.close()


async def _http_error(request: Any, exc: Exception) -> Any:
    """Starlette's own refusals (404, 405, a CSRF 403) in the one JSON error shape."""
    from starlette.exceptions import HTTPException

    from .auth import error_response

    assert isinstance(exc, HTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.url.path}; see /api/v1/openapi.json"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, message, dict(exc.headers or {}) or None)


async def _server_error(request: Any, exc: Exception) -> Any:
    """A bug or an unexpected failure: logged with its traceback, answered as JSON."""
    from .auth import error_response

    logging.getLogger("offload.http").error(
        "%s %s failed", request.method, request.url.path, exc_info=exc
    )
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")
