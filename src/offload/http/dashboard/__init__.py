"""The dashboard: server-rendered pages for operators, at ``/``.

* ``GET /`` every declared queue (counts, oldest ready task's age, rate, concurrency,
  pause/resume/purge) and every task function's measured profile;
* ``GET /queues/{queue}`` one queue with its dead letters (error, call, traceback; requeue,
  delete);
* ``GET /login`` the login form (the auth module sets the cookie on ``POST /login``);
* ``GET /static/...`` the stylesheet and the one small script, shipped in the package.

Pages are jinja2 templates with autoescape on, so every text a user or the broker wrote
(queue names, task arguments, error messages, tracebacks) is escaped. They are served with
a Content-Security-Policy that allows scripts from this server's ``/static/`` only, so an
inline script or event handler would not run even if one got in. ``?part=live`` renders a
page's live region alone; the script fetches it every few seconds and swaps it in, so the
counts stay fresh without a full reload, and everything still works with JavaScript off.

State changes are POSTs carrying the CSRF token the auth middleware checks, answered by a
redirect back to the page (post/redirect/get).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .views import Dashboard

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from ..context import HttpContext

__all__ = ["Dashboard", "routes"]

HERE = Path(__file__).parent


def routes(ctx: HttpContext) -> list[BaseRoute]:
    """The dashboard's routes for ``ctx``; its settings live in ``ctx.extras["dashboard"]``
    (a :class:`Dashboard`)."""
    dash = Dashboard(ctx, HERE / "templates", HERE / "static")
    ctx.extras["dashboard"] = dash
    queue = "/queues/{queue:str}"
    return [
        Route("/", dash.overview, methods=["GET"]),
        Route("/login", dash.login_form, methods=["GET"]),
        Route(queue, dash.queue_page, methods=["GET"]),
        Route(queue + "/pause", dash.pause, methods=["POST"]),
        Route(queue + "/resume", dash.resume, methods=["POST"]),
        Route(queue + "/purge", dash.purge, methods=["POST"]),
        Route(queue + "/dead/requeue", dash.requeue_all, methods=["POST"]),
        Route(queue + "/dead/{id:str}/requeue", dash.requeue, methods=["POST"]),
        Route(queue + "/dead/{id:str}/delete", dash.delete, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
