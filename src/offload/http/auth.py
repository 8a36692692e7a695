"""Who may use the HTTP face: a bearer token, or the dashboard's login cookie, on every route
but the public ones (deny by default); and CSRF protection for cookie-authenticated writes.

Every request passes :class:`AuthMiddleware` before any route sees it. A request is let in
when it carries ``Authorization: Bearer TOKEN`` with TOKEN one of the accepted tokens, or
the session cookie the login form sets, or when its path is public (:data:`PUBLIC_PATHS`,
:data:`PUBLIC_PREFIXES`). Everything else gets a JSON 401 (a browser asking for a page is
sent to the login form instead).

The session cookie is stateless, so it survives a restart and dies with its token::

    <expires>.<token fingerprint>.<HMAC-SHA256(token, "session" + expires + fingerprint)>

It never contains the token; removing a token from ``$OFFLOAD_API_TOKENS`` ends every
session made with it. It is ``HttpOnly`` and ``SameSite=Strict``.

A browser sends cookies by itself, so a state-changing request (POST, PUT, PATCH, DELETE)
authenticated by the cookie must also prove it came from one of our pages: a CSRF token
(:func:`csrf_token`, derived from the session cookie) in the ``X-CSRF-Token`` header or in
a ``csrf_token`` field of a urlencoded form; and its ``Origin``, when sent, must be ours.
The middleware checks this for every route, so no handler can forget it;
:func:`require_csrf` repeats the check for a handler that wants to be explicit. Requests
authenticated by a bearer token carry no ambient credential and need no CSRF token.

Tokens are compared in constant time, and a client that sends wrong ones is slowed down
(:mod:`offload.http.limits`): past its allowance a bearer request gets a JSON 429 with
``Retry-After``, and the login form says how long to wait, before any token is looked at.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from .context import HttpContext

__all__ = [
    "COOKIE_NAME",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "PUBLIC_PATHS",
    "PUBLIC_PREFIXES",
    "SESSION_SECONDS",
    "AuthMiddleware",
    "auth_routes",
    "csrf_token",
    "error_response",
    "limited",
    "login",
    "logout",
    "require_csrf",
    "too_many",
]

COOKIE_NAME = "offload_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
#: how long a dashboard login lasts
SESSION_SECONDS = 12 * 3600.0
#: paths anyone may reach: the health check and the login form (GET shows it, POST logs in)
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/logout"})
#: path prefixes anyone may reach: the dashboard's static assets
PUBLIC_PREFIXES = ("/static/",)
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: the largest form body the CSRF check reads (a dashboard form is a few fields)
_MAX_FORM = 64 * 1024

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error shape of the HTTP face (Google's, which the Cloud Tasks surface needs
    anyway): ``{"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "..."}}``."""
    body = {"error": {"code": code, "status": _STATUS.get(code, "UNKNOWN"), "message": message}}
    return JSONResponse(body, status_code=code, headers=headers)


# -- tokens and sessions ------------------------------------------------------------------


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _mac(token: str, *parts: str) -> str:
    return hmac.new(token.encode(), "\x00".join(parts).encode(), hashlib.sha256).hexdigest()


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def limited(ctx: HttpContext, scope: Scope) -> int:
    """Whole seconds the requesting client must wait before it may try a token again (0:
    it may now): it sent too many wrong ones (see :mod:`offload.http.limits`)."""
    return ctx.limiter.retry_after(_client(scope))


def too_many(ctx: HttpContext, scope: Scope) -> JSONResponse:
    """The API's answer to a client that must wait: 429 with ``Retry-After``."""
    wait = limited(ctx, scope)
    return error_response(
        429,
        f"too many wrong tokens from this address: try again in {wait} s, with a token "
        "from OFFLOAD_API_TOKENS",
        {"Retry-After": str(wait)},
    )


def check_token(ctx: HttpContext, token: str) -> bool:
    """Whether ``token`` is one of the accepted tokens, compared in constant time."""
    ok = False
    for accepted in ctx.tokens:
        ok |= hmac.compare_digest(accepted.encode(), token.encode())
    return ok


def make_session(token: str, now: float | None = None) -> str:
    """A session cookie value for an accepted ``token`` (see the module docstring)."""
    expires = str(int((time.time() if now is None else now) + SESSION_SECONDS))
    fp = _fingerprint(token)
    return f"{expires}.{fp}.{_mac(token, 'session', expires, fp)}"


def session_token(ctx: HttpContext, cookie: str | None) -> str | None:
    """The accepted token a session cookie was made with, or None when the cookie is
    missing, forged, expired, or its token is no longer accepted."""
    if not cookie or cookie.count(".") != 2:
        return None
    expires, fp, mac = cookie.split(".")
    if not expires.isdigit() or int(expires) < time.time():
        return None
    for token in ctx.tokens:
        if hmac.compare_digest(_fingerprint(token), fp) and hmac.compare_digest(
            _mac(token, "session", expires, fp), mac
        ):
            return token
    return None


def csrf_token(request: Request) -> str:
    """The CSRF token a page must send back with a state-changing request (a hidden
    ``csrf_token`` form field or an ``X-CSRF-Token`` header); empty when the request is
    not cookie-authenticated (bearer tokens and ``--no-auth`` need none)."""
    ctx: HttpContext = request.app.state.offload
    cookie = request.cookies.get(COOKIE_NAME)
    token = session_token(ctx, cookie)
    if token is None or cookie is None:
        return ""
    return _mac(token, "csrf", cookie)


def _csrf_ok(ctx: HttpContext, cookie: str, given: str | None) -> bool:
    token = session_token(ctx, cookie)
    if token is None or not given:
        return False
    return hmac.compare_digest(_mac(token, "csrf", cookie), given)


async def require_csrf(request: Request) -> None:
    """Refuse (403) a cookie-authenticated state-changing request without a valid CSRF
    token. The middleware already did this for every route; a handler may call it to say
    so explicitly. Reads the form, so call it before the handler reads the body itself."""
    if getattr(request.state, "csrf_checked", False):
        return
    if request.method not in _UNSAFE or getattr(request.state, "auth", None) != "cookie":
        return
    given = request.headers.get(CSRF_HEADER)
    if not given and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    ctx: HttpContext = request.app.state.offload
    if not _csrf_ok(ctx, request.cookies.get(COOKIE_NAME, ""), given):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page and try again")
    request.state.csrf_checked = True


# -- the login form's handlers ------------------------------------------------------------


def _safe_next(value: Any) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return "/"
    if "\\" in value or any(ord(c) < 32 for c in value):
        return "/"
    return value


async def login(request: Request) -> Response:
    """``POST /login`` (form fields ``token`` and optional ``next``): with an accepted token,
    set the session cookie and go to ``next``; otherwise back to ``/login?error=token``, or
    to ``/login?error=limited`` (the token unread) while this client must wait after too
    many wrong ones."""
    ctx: HttpContext = request.app.state.offload
    if not _same_origin(request.headers, request.url.netloc):
        return error_response(403, "login from another site refused (Origin mismatch)")
    form = await request.form()
    token = form.get("token")
    target = _safe_next(form.get("next"))
    wait = limited(ctx, request.scope)
    if wait:
        return RedirectResponse(
            f"/login?error=limited&next={quote(target, safe='/')}",
            status_code=303,
            headers={"Retry-After": str(wait)},
        )
    if not isinstance(token, str) or not token or not check_token(ctx, token):
        ctx.limiter.failed(_client(request.scope))
        return RedirectResponse(
            f"/login?error=token&next={quote(target, safe='/')}", status_code=303
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        make_session(token),
        max_age=int(SESSION_SECONDS),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


async def logout(request: Request) -> Response:
    """``POST /logout``: drop the session cookie and go to the login form."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
    return response


def auth_routes() -> list[Route]:
    """The login and logout handlers; the dashboard serves ``GET /login`` (the form)."""
    return [
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]


# -- the middleware -----------------------------------------------------------------------


def _same_origin(headers: Headers, netloc: str) -> bool:
    origin = headers.get("origin")
    if origin is None:  # not a cross-site browser request (those always send Origin)
        return True
    return urlsplit(origin).netloc == netloc


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthMiddleware:
    """Deny by default: let a request through only with an accepted bearer token, a valid
    session cookie (plus a CSRF token on writes), or to a public path."""

    def __init__(self, app: ASGIApp, ctx: HttpContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        path = scope["path"]
        if self.ctx.no_auth or _public(path):
            state["auth"] = "none"
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                await self._deny(scope, receive, send, 401, "Authorization must be 'Bearer TOKEN'")
                return
            if limited(self.ctx, scope):
                await too_many(self.ctx, scope)(scope, receive, send)
                return
            if not check_token(self.ctx, token.strip()):
                self.ctx.limiter.failed(_client(scope))
                await self._deny(scope, receive, send, 401, "the bearer token is not accepted")
                return
            state["auth"] = "token"
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie is None or session_token(self.ctx, cookie) is None:
            if scope["method"] == "GET" and "text/html" in headers.get("accept", ""):
                query = scope["query_string"].decode("latin-1")
                target = _safe_next(path + (f"?{query}" if query else ""))
                response: Response = RedirectResponse(
                    f"/login?next={quote(target, safe='/')}", status_code=303
                )
                await response(scope, receive, send)
                return
            why = "no credentials" if cookie is None else "the session expired or was revoked"
            await self._deny(scope, receive, send, 401, why)
            return
        state["auth"] = "cookie"
        if scope["method"] in _UNSAFE:
            if not _same_origin(headers, request.url.netloc):
                await self._deny(scope, receive, send, 403, "request from another site refused")
                return
            given = headers.get(CSRF_HEADER)
            if given is None and headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                body, receive = await _buffer(receive)
                if body is None:
                    await self._deny(scope, receive, send, 413, "form too large")
                    return
                values = parse_qs(body.decode("latin-1")).get(CSRF_FIELD)
                given = values[0] if values else None
            if not _csrf_ok(self.ctx, cookie, given):
                await self._deny(
                    scope,
                    receive,
                    send,
                    403,
                    "missing or wrong CSRF token; reload the page and try again",
                )
                return
            state["csrf_checked"] = True
        await self.app(scope, receive, send)

    async def _deny(self, scope: Scope, receive: Receive, send: Send, code: int, why: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="offload"'} if code == 401 else None
        message = why
        if code == 401:
            message = (
                f"{why}: send 'Authorization: Bearer TOKEN' with a token from "
                "OFFLOAD_API_TOKENS, or log in at /login"
            )
        await error_response(code, message, headers)(scope, receive, send)


async def _buffer(receive: Receive) -> tuple[bytes | None, Receive]:
    """Read the whole (small) request body and return it with a ``receive`` that replays
    it to the app; None when it passes :data:`_MAX_FORM`."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > _MAX_FORM:
            return None, receive
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay
