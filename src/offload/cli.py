"""The ``offload`` command: thin calls into the library, one clear line on any error.

Every refusal is one line on stderr, ``Error: <what was wrong>; <what to do>``: exit status
2 for a bad option or argument (click's usage errors, without the usage banner), 1 for
anything else. Input is checked in full before anything is sent, so a refused ``send``
enqueues nothing. Output goes through :mod:`offload.cli_render`.

The commands a worker never runs (``send`` and the queue commands of :mod:`offload.cli_admin`,
``plan``, ``k8s``, ``profile``, ``periodic``) are imported when invoked or listed, so their
modules stay out of every worker process: each one costs resident memory there for as long as
the worker lives.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import time
from typing import Any

import click

from . import cli_http, cli_pools
from . import cli_render as out
from .app import App
from .errors import OffloadError, UnknownQueue
from .worker import Worker
from .worker.brokerhost import MODES as BROKER_PROCESS_MODES
from .worker.runner import LOOPS
from .worker.runner import run as run_loop

__all__ = ["load_app", "main"]


def _bad(where: str, message: str) -> click.ClickException:
    """One line on stderr naming the bad value, exit status 1 (no usage banner)."""
    return click.ClickException(f"{where}: {message}")


def _dotted(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def load_app(spec: str) -> App:
    """Import ``module:attribute`` and return the App it names.

    Raises :class:`click.ClickException` (one line, exit status 1) naming the spec and what
    to write instead. Exceptions raised by the module's own code while it is imported
    propagate with their traceback: they are bugs in that code, and the traceback finds them.
    """
    module_name, colon, attr = spec.partition(":")
    if not (colon and module_name and attr):
        example = f"{module_name}:app" if module_name and _dotted(module_name) else "pkg.tasks:app"
        raise _bad("MODULE:APP", f"{spec!r}: expected MODULE:APP, e.g. {example}")
    for what, name in (("module", module_name), ("attribute", attr)):
        if not _dotted(name):
            raise _bad(
                "MODULE:APP",
                f"{spec!r}: {name!r} is not a dotted {what} name; write it as in an import "
                "statement, e.g. pkg.tasks:app (not a file path or a relative name)",
            )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise _bad(
                "MODULE:APP",
                f"{spec!r}: no module named {exc.name!r} (run from the "
                "directory that contains it, or set PYTHONPATH)",
            ) from None
        raise
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            raise _bad("MODULE:APP", f"{spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, App):
        raise _bad("MODULE:APP", f"{spec!r} is a {type(obj).__name__}, not an offload.App")
    return obj


_MISSING: Any = object()


class _Seconds(click.ParamType):
    """A finite number of seconds >= 0: ``nan`` passes a range check (every comparison with
    it is false) and ``inf`` would mean "never", so both are refused here."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and seconds >= 0):
            self.fail(f"{value!r}: must be a finite number of seconds >= 0", param, ctx)
        return seconds


SECONDS = _Seconds()


def _one_line(message: str) -> str:
    # a broker driver's message may span lines; a refusal stays one line
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


# command name -> the module defining it (as a function of that name), imported on first use
# (see the module docstring)
_LAZY: dict[str, str] = {
    "send": "offload.cli_admin",
    "queues": "offload.cli_admin",
    "dead": "offload.cli_admin",
    "requeue": "offload.cli_admin",
    "pause": "offload.cli_admin",
    "resume": "offload.cli_admin",
    "purge": "offload.cli_admin",
    "delete": "offload.cli_admin",
    "metrics": "offload.cli_admin",
    "plan": "offload.cli_ops",
    "k8s": "offload.cli_ops",
    "profile": "offload.cli_profile",
    "periodic": "offload.cli_calls",
}


class _Group(click.Group):
    """Turns every refusal into one line on stderr: exit status 2 for usage, 1 otherwise.
    Imports the commands of :data:`_LAZY` when one is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            command = getattr(importlib.import_module(_LAZY[cmd_name]), cmd_name)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = (exc.ctx or ctx).command_path
            message = _one_line(exc.format_message())
            click.echo(f"Error: {message} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except OffloadError as exc:
            click.echo(f"Error: {_one_line(str(exc))}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="offload")
def main() -> None:
    """offload: durable task queues that grow a monolith into services."""


app_arg = click.argument("app_spec", metavar="MODULE:APP")
json_flag = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Machine-readable output: strict JSON (non-finite numbers as null, bytes as base64, "
    "times as ISO 8601).",
)


def _queue_list(app: App, given: str | None) -> list[str] | None:
    """The queues ``--queues`` names, each once, in the order given; None (every queue) only
    when the option was left out. An empty value usually is an unset shell variable
    (``--queues "$QUEUES"``), and serving every queue then is the opposite of what was meant.
    """
    if given is None:
        return None
    names = list(dict.fromkeys(q.strip() for q in given.split(",") if q.strip()))
    if not names:
        raise click.UsageError(
            f"--queues {given!r} names no queue; give comma-separated queue names "
            "(e.g. --queues emails,payments), or leave --queues out to serve every queue"
        )
    for q in names:
        try:
            app.policy(q)
        except UnknownQueue as exc:
            raise click.UsageError(f"--queues: {exc}") from None
    return names


def _run_worker(
    app: App,
    queues: list[str] | None,
    concurrency: int,
    grace: float,
    burst: bool,
    loop: str = "auto",
    broker_process: str = "auto",
) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    worker = Worker(
        app,
        queues=queues,
        concurrency=concurrency,
        grace=grace,
        burst=burst,
        install_signal_handlers=True,
        tune_gc=True,  # this process runs the worker alone: see offload/worker/gctune.py
        broker_process=broker_process,
        hooks=click.get_current_context().meta.get("offload.worker_hooks"),
    )
    names = ", ".join(worker.queues)
    logging.getLogger("offload.worker").info(
        "worker pid %d on %s, queues: %s, concurrency %d",
        os.getpid(),
        out.redact(app.broker_url),
        names,
        concurrency,
    )
    t0 = time.monotonic()
    # asyncio.run, bounded, on uvloop when installed: see offload/worker/runner.py
    stats = run_loop(worker.run(), loop=loop)
    took = time.monotonic() - t0
    logging.getLogger("offload.worker").info(
        "stopped after %.1fs: %d claimed, %d succeeded, %d retried, %d dead, %d released",
        took,
        stats.claimed,
        stats.succeeded,
        stats.retried,
        stats.dead,
        stats.released,
    )


concurrency_opt = click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1),
    help="Tasks in flight at once [default: the pool's concurrency, else "
    f"{cli_pools.DEFAULT_CONCURRENCY}].",
)
grace_opt = click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=SECONDS,
    help="Seconds running tasks get to finish on SIGTERM.",
)
loop_opt = click.option(
    "--loop",
    type=click.Choice(LOOPS),
    default="auto",
    show_default=True,
    envvar="OFFLOAD_LOOP",
    show_envvar=True,
    help="The worker's event loop: auto is uvloop when it is installed (the redis and "
    "postgres extras include it), else the standard library's.",
)
broker_process_opt = click.option(
    "--broker-process",
    type=click.Choice(BROKER_PROCESS_MODES),
    default="auto",
    show_default=True,
    envvar="OFFLOAD_BROKER_PROCESS",
    show_envvar=True,
    help="Move claims and acks to a helper process while a backlog waits, off the event "
    "loop's core: auto does so on SQLite for async tasks when the machine has 2 cores or "
    "more; on does so on SQLite and PostgreSQL.",
)


@main.command()
@app_arg
@click.option("--queues", "-q", help="Comma-separated queues to serve (default: all).")
@cli_pools.pool_option
@cli_pools.topology_option
@concurrency_opt
@grace_opt
@loop_opt
@broker_process_opt
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
def worker(
    app_spec: str,
    queues: str | None,
    pool: str | None,
    topology: str | None,
    concurrency: int | None,
    grace: float,
    loop: str,
    broker_process: str,
    burst: bool,
) -> None:
    """Run a worker for some or all of the app's queues, or for one pool's."""
    app = load_app(app_spec)
    if pool is not None:
        served, concurrency = cli_pools.pool_queues(app, pool, topology, queues, concurrency)
    elif topology is not None:
        raise click.UsageError("--topology needs --pool NAME: the pool whose queues to serve")
    else:
        served = _queue_list(app, queues)
    concurrency = concurrency or cli_pools.DEFAULT_CONCURRENCY
    _run_worker(app, served, concurrency, grace, burst, loop, broker_process)


@main.command()
@app_arg
@cli_pools.topology_option
@concurrency_opt
@grace_opt
@loop_opt
@broker_process_opt
@click.option(
    "--autoscale",
    is_flag=True,
    help="Keep each pool's workers between its replicas min and max by queue latency "
    "(needs a topology; see its target_latency and cooldown).",
)
def run(
    app_spec: str,
    topology: str | None,
    concurrency: int | None,
    grace: float,
    loop: str,
    broker_process: str,
    autoscale: bool,
) -> None:
    """Run the whole app: every queue in one process (the monolith), or with a topology
    one worker process per pool, restarted when it dies, rolled over to new code on
    SIGHUP, all drained on SIGTERM."""
    app = load_app(app_spec)
    path = topology or app.topology
    if path is not None:
        os.environ["OFFLOAD_LOOP"] = loop  # the pools' worker processes inherit it
        os.environ["OFFLOAD_BROKER_PROCESS"] = broker_process
        sys.exit(cli_pools.run_pools(app_spec, app, path, concurrency, grace, autoscale))
    if autoscale:
        raise click.UsageError(
            "--autoscale scales the pools of a topology; give --topology FILE (or "
            "App(topology=...), $OFFLOAD_TOPOLOGY) with replicas = [min, max] per pool"
        )
    concurrency = concurrency or cli_pools.DEFAULT_CONCURRENCY
    _run_worker(app, None, concurrency, grace, False, loop, broker_process)


cli_http.register(main)  # serve, run --http, worker --metrics-port

main.add_command(cli_pools.machines)
main.add_command(cli_pools.check)

if __name__ == "__main__":  # pragma: no cover
    main()
