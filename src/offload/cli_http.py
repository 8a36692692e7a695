"""The CLI's HTTP face: ``offload serve``, ``offload run --http`` and ``offload worker
--metrics-port``.

Deny by default, checked before anything listens: the accepted tokens come from
``$OFFLOAD_API_TOKENS`` (comma-separated); with none the server refuses to start unless
``--no-auth`` is given, and ``--no-auth`` is refused on any host but a loopback one.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import click

__all__ = ["HostPort", "check_auth", "register", "serve"]

log = logging.getLogger("offload.http")

#: the ``click`` context key under which ``worker --metrics-port`` hands its hooks to the
#: worker the command starts
HOOKS_KEY = "offload.worker_hooks"


def _tokens() -> list[str]:
    return [t.strip() for t in os.environ.get("OFFLOAD_API_TOKENS", "").split(",") if t.strip()]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (a name other than localhost is not:
    it may resolve anywhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth(host: str, no_auth: bool, option: str = "--host") -> list[str]:
    """The accepted tokens, or a usage error saying how to configure them; ``--no-auth``
    only on loopback (anyone on the network could otherwise run tasks)."""
    tokens = _tokens()
    if no_auth:
        if not is_loopback(host):
            raise click.UsageError(
                f"--no-auth is refused on {option} {host!r}: without a token anyone who can "
                "reach it may run tasks; set OFFLOAD_API_TOKENS, or listen on 127.0.0.1"
            )
        return []
    if not tokens:
        raise click.UsageError(
            "no API token configured: set OFFLOAD_API_TOKENS (comma-separated bearer "
            "tokens), or pass --no-auth to serve without authentication on loopback only"
        )
    return tokens


class HostPort(click.ParamType):
    """``[HOST:]PORT`` (``[::1]:8080`` for IPv6); the host defaults to 127.0.0.1."""

    name = "[HOST:]PORT"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        host, sep, port = text.rpartition(":")
        if not sep:
            host = "127.0.0.1"
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit() or not 0 < int(port) < 65536:
            self.fail(
                f"{text!r}: give [HOST:]PORT with a port from 1 to 65535, e.g. 8080 "
                "or 0.0.0.0:8080",
                param,
                ctx,
            )
        return host, int(port)


def _server(asgi: Any, host: str, port: int, access_log: bool) -> Any:
    import uvicorn

    config = uvicorn.Config(
        asgi,
        host=host,
        port=port,
        log_level="info",
        access_log=access_log,
        lifespan="on",
        server_header=False,
    )
    return uvicorn.Server(config)


def serve(app: Any, host: str, port: int, tokens: list[str], *, access_log: bool = False) -> None:
    """Serve ``app``'s HTTP face in this thread until SIGINT or SIGTERM."""
    from .http import create_app

    asgi = create_app(app, tokens=tokens, no_auth=not tokens)
    _server(asgi, host, port, access_log).run()


class _Beside:
    """An HTTP server in a daemon thread beside a worker, stopped when the worker stops."""

    def __init__(self, asgi: Any, host: str, port: int) -> None:
        self.server = _server(asgi, host, port, access_log=False)
        self.thread = threading.Thread(target=self._run, name="offload-http", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; the log says why
            log.error("the HTTP server beside the worker did not start")

    def __enter__(self) -> _Beside:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _wrap(
    command: click.Command,
    option: click.Option,
    start: Callable[[dict[str, Any], Any], Any],
) -> None:
    """Add ``option`` and ``--no-auth`` to ``command``; when given, ``start(kwargs, app)``
    returns a context manager that runs beside the command's own work."""
    command.params.append(option)
    command.params.append(
        click.Option(
            ["--no-auth"],
            is_flag=True,
            help="Serve HTTP without a token (loopback hosts only).",
        )
    )
    original = command.callback
    assert original is not None
    name = option.name

    def callback(**kwargs: Any) -> Any:
        where = kwargs.pop(name)
        no_auth = kwargs.pop("no_auth")
        if where is None:
            if no_auth:
                raise click.UsageError(f"--no-auth only applies with {option.opts[0]}")
            return original(**kwargs)
        from .cli import load_app

        host, port = where
        tokens = check_auth(host, no_auth, option.opts[0])
        app = load_app(kwargs["app_spec"])
        with start({"host": host, "port": port, "tokens": tokens}, app):
            return original(**kwargs)

    command.callback = callback


def _http_beside(opts: dict[str, Any], app: Any) -> _Beside:
    from .http import create_app

    asgi = create_app(app, tokens=opts["tokens"], no_auth=not opts["tokens"])
    return _Beside(asgi, opts["host"], opts["port"])


def _metrics_beside(opts: dict[str, Any], app: Any) -> _Beside:
    from .http import create_app
    from .http.metrics import EXTRA, WorkerMetrics

    hooks = WorkerMetrics()
    click.get_current_context().meta[HOOKS_KEY] = hooks
    asgi = create_app(app, tokens=opts["tokens"], no_auth=not opts["tokens"], parts=("metrics",))
    asgi.state.offload.extras[EXTRA] = hooks
    return _Beside(asgi, opts["host"], opts["port"])


def register(main: click.Group) -> None:
    """Add ``serve`` to the CLI, ``--http`` to ``run`` and ``--metrics-port`` to ``worker``."""
    main.add_command(serve_command)
    _wrap(
        main.commands["run"],
        click.Option(
            ["--http"],
            type=HostPort(),
            help="Also serve the HTTP face (API, dashboard, metrics) on [HOST:]PORT.",
        ),
        _http_beside,
    )
    _wrap(
        main.commands["worker"],
        click.Option(
            ["--metrics-port"],
            type=HostPort(),
            help="Serve Prometheus /metrics (broker and this worker's own) on [HOST:]PORT.",
        ),
        _metrics_beside,
    )


@click.command("serve")
@click.argument("app_spec", metavar="MODULE:APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--no-auth", is_flag=True, help="Serve without a token (refused unless --host is loopback)."
)
@click.option("--access-log", is_flag=True, help="Log every request.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes sharing the port (each with its own broker connections).",
)
def serve_command(
    app_spec: str, host: str, port: int, no_auth: bool, access_log: bool, workers: int
) -> None:
    """Serve the HTTP face: JSON API, Cloud Tasks API, dashboard, /metrics."""
    from .cli import load_app

    tokens = check_auth(host, no_auth)
    app = load_app(app_spec)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info(
        "serving app %s on http://%s:%d (%s)",
        app.name,
        f"[{host}]" if ":" in host else host,
        port,
        f"{len(tokens)} token(s)" if tokens else "NO AUTH, loopback only",
    )
    if workers == 1:
        serve(app, host, port, tokens, access_log=access_log)
        return
    import uvicorn

    # uvicorn starts each process from an import string; the spec and the (already
    # checked) auth mode travel in the environment, which the processes inherit
    os.environ[_SPEC_ENV] = app_spec
    os.environ[_NO_AUTH_ENV] = "1" if not tokens else ""
    uvicorn.run(
        "offload.cli_http:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        lifespan="on",
        server_header=False,
    )


_SPEC_ENV = "OFFLOAD_SERVE_APP"
_NO_AUTH_ENV = "OFFLOAD_SERVE_NO_AUTH"


def app_from_environment() -> Any:
    """The ASGI app of one ``offload serve --workers N`` process (see :func:`serve_command`):
    tokens from ``$OFFLOAD_API_TOKENS``, the App from the spec ``serve`` was given."""
    from .cli import load_app
    from .http import create_app

    tokens = _tokens()
    no_auth = os.environ.get(_NO_AUTH_ENV) == "1"
    return create_app(load_app(os.environ[_SPEC_ENV]), tokens=tokens, no_auth=no_auth)
