"""offload's HTTP face: one ASGI app serving the JSON API, the Cloud Tasks v2 REST surface,
the dashboard and Prometheus metrics, deny-by-default (``pip install 'offload[http]'``).

:func:`create_app` is the only entry point; ``offload serve`` runs it under uvicorn.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import App

__all__ = ["create_app"]

#: the parts, each a module of this package with ``routes(ctx)``; a part not written yet is
#: simply absent
PARTS = ("api", "cloudtasks", "dashboard", "metrics")


def create_app(app: App, *, tokens: list[str] | None = None, no_auth: bool = False) -> Any:
    """The ASGI app serving ``app``. ``tokens``: the accepted bearer tokens (default:
    ``$OFFLOAD_API_TOKENS``, comma-separated); with none, ``no_auth=True`` is required."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ..errors import ConfigError
    from .context import HttpContext

    if tokens is None:
        tokens = [t.strip() for t in os.environ.get("OFFLOAD_API_TOKENS", "").split(",")]
    accepted = frozenset(t for t in tokens if t)
    if not accepted and not no_auth:
        raise ConfigError(
            "no API token configured: set OFFLOAD_API_TOKENS (comma-separated) or pass "
            "tokens=; to serve without authentication on loopback only, pass no_auth=True "
            "(offload serve --no-auth)"
        )
    ctx = HttpContext(app, frozenset() if no_auth else accepted, no_auth)

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    routes: list[Any] = [Route("/healthz", healthz)]
    for part in PARTS:
        try:
            module = importlib.import_module(f"{__name__}.{part}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{part}":
                continue
            raise
        routes.extend(module.routes(ctx))
    server = Starlette(routes=routes)
    server.state.offload = ctx
    return server
