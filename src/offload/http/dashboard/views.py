"""The dashboard's request handlers and the one place its pages are rendered.

Every response goes through :meth:`Dashboard.page`, which sets the security headers (the
Content-Security-Policy that forbids inline script, no framing, no sniffing, no caching of
pages that show live data). Handlers read and change queues only through the App's public
methods, run off the event loop by :meth:`HttpContext.call`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ...errors import BrokerError, ConfigError, OffloadError, UnknownQueue
from ..auth import csrf_token, limited, require_csrf
from . import model

if TYPE_CHECKING:
    from ..context import HttpContext

__all__ = ["SECURITY_HEADERS", "Dashboard"]

#: scripts and styles from this server only; no inline script, no plugins, no framing
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

#: what a finished action says on the page it returns to (a fixed text per action, so a
#: crafted link cannot make the dashboard display words of an attacker's choosing)
NOTICES = {
    "paused": "Queue paused: workers finish the tasks they hold and claim no more.",
    "resumed": "Queue resumed.",
    "purged": "Purged {n} ready and scheduled {tasks}.",
    "requeued": "Requeued {n} dead {letters}.",
    "deleted": "Deleted {n} dead {letters}.",
}

#: the longest rendering of a dead letter's arguments shown on the page
CALL_CHARS = 500


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "\u2014"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} \u00b5s"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _size(n: int) -> str:
    if not n:
        return "\u2014"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _call(letter: Any) -> str:
    """``task(arg, key=value)`` for a dead letter whose payload decoded, cut to a length a
    page can hold."""
    parts = [repr(a) for a in letter.args or ()]
    parts += [f"{k}={v!r}" for k, v in (letter.kwargs or {}).items()]
    text = f"{letter.task}({', '.join(parts)})"
    return text if len(text) <= CALL_CHARS else text[: CALL_CHARS - 1] + "\u2026"


def _local_path(value: Any, default: str) -> str:
    """Where to go back to after an action: a path on this server, never another site."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 32 for c in value)
    ):
        return default
    return value


class Dashboard:
    """The dashboard of one server: its templates, static assets and settings.

    ``refresh_seconds`` is how often the pages' live regions are fetched again (0 turns
    live refresh off)."""

    def __init__(self, ctx: HttpContext, templates: Path, static: Path) -> None:
        self.ctx = ctx
        self.refresh_seconds = 3.0
        self.env = Environment(
            loader=FileSystemLoader(templates),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # a content hash in each asset's URL, so a browser never runs a stale script
        # against a newer page
        self.versions = {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:10]
            for p in static.iterdir()
            if p.is_file()
        }
        self.env.globals.update(
            static=self._static_url,
            url_for_queue=lambda name: "/queues/" + quote(name, safe=""),
            age=model.format_age,
            duration=_duration,
            size=_size,
            call=_call,
        )

    def _static_url(self, name: str) -> str:
        return f"/static/{name}?v={self.versions[name]}"

    # -- rendering ------------------------------------------------------------------------

    def page(
        self, request: Request, template: str, status_code: int = 200, **values: Any
    ) -> HTMLResponse:
        """Render ``template`` with what every page needs, under the security headers."""
        auth = getattr(request.state, "auth", None)
        done = request.query_params.get("done", "")
        notice = ""
        if done in NOTICES:
            n_text = request.query_params.get("n", "0")
            n = int(n_text) if n_text.isdigit() else 0
            notice = NOTICES[done].format(
                n=n,
                tasks=_plural(n, "task", "tasks"),
                letters=_plural(n, "letter", "letters"),
            )
        html = self.env.get_template(template).render(
            app_name=self.ctx.app.name,
            csrf=csrf_token(request),
            signed_in=auth == "cookie",
            refresh_ms=int(self.refresh_seconds * 1000),
            notice=notice,
            updated=time.strftime("%H:%M:%S"),
            **values,
        )
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def failure(self, request: Request, exc: OffloadError) -> HTMLResponse:
        """An error page that says what was wrong: 404 for a queue this App does not
        declare, 400 for other bad input, 503 when the broker cannot be reached."""
        if isinstance(exc, UnknownQueue):
            status, heading = 404, "No such queue"
        elif isinstance(exc, ConfigError):
            status, heading = 400, "Bad request"
        elif isinstance(exc, BrokerError):
            status, heading = 503, "The broker failed"
        else:
            status, heading = 500, "Something went wrong"
        return self.page(
            request, "error.html", status, code=status, heading=heading, message=str(exc)
        )

    async def _read(
        self, request: Request, template: str, part: str, read: Callable[..., dict[str, Any]], *a
    ) -> Response:
        try:
            values = await self.ctx.call(read, self.ctx.app, *a)
        except OffloadError as exc:
            return self.failure(request, exc)
        if request.query_params.get("part") == "live":
            template = part
        return self.page(request, template, **values)

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        return await self._read(request, "overview.html", "_overview_live.html", model.overview)

    async def queue_page(self, request: Request) -> Response:
        queue = request.path_params["queue"]
        return await self._read(
            request, "queue.html", "_queue_live.html", model.dead_letters_page, queue
        )

    async def login_form(self, request: Request) -> Response:
        """The form; after a wrong token it says so, and while this client must wait after
        too many wrong ones, for how long (429, so scripts see it too)."""
        error = request.query_params.get("error")
        wait = limited(self.ctx, request.scope) if error == "limited" else 0
        response = self.page(
            request,
            "login.html",
            429 if wait else 200,
            error=error == "token",
            wait=wait,
            next=_local_path(request.query_params.get("next"), "/"),
        )
        if wait:
            response.headers["Retry-After"] = str(wait)
        return response

    # -- actions --------------------------------------------------------------------------

    async def _act(
        self, request: Request, op: Callable[..., Any], done: str, back: str, *args: Any
    ) -> Response:
        """Run one App operation for a POST and go back to ``next`` (or ``back``)."""
        await require_csrf(request)
        form = await request.form()
        try:
            result = await self.ctx.call(op, *args)
        except OffloadError as exc:
            return self.failure(request, exc)
        target = _local_path(form.get("next"), back).split("?", 1)[0]
        n = 1 if result is True else 0 if result in (None, False) else int(result)
        query = urlencode({"done": done, "n": n})
        return RedirectResponse(f"{target}?{query}", status_code=303, headers=SECURITY_HEADERS)

    def _queue(self, request: Request) -> tuple[str, str]:
        queue = request.path_params["queue"]
        return queue, "/queues/" + quote(queue, safe="")

    async def pause(self, request: Request) -> Response:
        queue, back = self._queue(request)
        return await self._act(request, self.ctx.app.pause, "paused", back, queue)

    async def resume(self, request: Request) -> Response:
        queue, back = self._queue(request)
        return await self._act(request, self.ctx.app.resume, "resumed", back, queue)

    async def purge(self, request: Request) -> Response:
        queue, back = self._queue(request)
        return await self._act(request, self.ctx.app.purge, "purged", back, queue)

    async def requeue_all(self, request: Request) -> Response:
        queue, back = self._queue(request)
        return await self._act(request, self.ctx.app.requeue_dead, "requeued", back, queue)

    async def requeue(self, request: Request) -> Response:
        queue, back = self._queue(request)
        id = request.path_params["id"]
        return await self._act(request, self.ctx.app.requeue_dead, "requeued", back, queue, id)

    async def delete(self, request: Request) -> Response:
        queue, back = self._queue(request)
        id = request.path_params["id"]
        return await self._act(
            request, model.delete_dead_letter, "deleted", back, self.ctx.app, queue, id
        )
