"""The ``offload`` command: thin calls into the library, one clear line on any error.

Every refusal is one line on stderr, ``Error: <what was wrong>; <what to do>``: exit status
2 for a bad option or argument (click's usage errors, without the usage banner), 1 for
anything else. Input is checked in full before anything is sent, so a refused ``send``
enqueues nothing. Output goes through :mod:`offload.cli_render`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import os
import sys
import time
from typing import Any

import click

from . import cli_calls, cli_http, cli_ops, cli_pools, cli_profile
from . import cli_render as out
from .app import App
from .errors import OffloadError, UnknownQueue, UnknownTask
from .task import TaskFunction
from .worker import Worker

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


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON itself does not have
    raise ValueError(f"{name} is not JSON (write null, or a number)")


def _json_arg(value: str | None, what: str, kind: type) -> Any:
    """``value`` parsed as strict JSON of type ``kind`` (list or dict); empty when not given."""
    if value is None:
        return kind()
    try:
        parsed = json.loads(value, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise _bad(what, f"invalid JSON {value!r}: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise _bad(what, f"invalid JSON {value!r}: {exc}") from None
    if not isinstance(parsed, kind):
        want = "array, e.g. '[\"a\", 1]'" if kind is list else "object, e.g. '{\"key\": 1}'"
        raise _bad(what, f"{value!r} must be a JSON {want}")
    return parsed


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


class _Group(click.Group):
    """Turns every refusal into one line on stderr: exit status 2 for usage, 1 otherwise."""

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
    app: App, queues: list[str] | None, concurrency: int, grace: float, burst: bool
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
    stats = asyncio.run(worker.run())
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
    help="Tasks in flight at once [default: the pool's concurrency, else 32].",
)
grace_opt = click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=SECONDS,
    help="Seconds running tasks get to finish on SIGTERM.",
)


@main.command()
@app_arg
@click.option("--queues", "-q", help="Comma-separated queues to serve (default: all).")
@cli_pools.pool_option
@cli_pools.topology_option
@concurrency_opt
@grace_opt
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
def worker(
    app_spec: str,
    queues: str | None,
    pool: str | None,
    topology: str | None,
    concurrency: int | None,
    grace: float,
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
    _run_worker(app, served, concurrency or cli_pools.DEFAULT_CONCURRENCY, grace, burst)


@main.command()
@app_arg
@cli_pools.topology_option
@concurrency_opt
@grace_opt
@click.option(
    "--autoscale",
    is_flag=True,
    help="Keep each pool's workers between its replicas min and max by queue latency "
    "(needs a topology; see its target_latency and cooldown).",
)
def run(
    app_spec: str, topology: str | None, concurrency: int | None, grace: float, autoscale: bool
) -> None:
    """Run the whole app: every queue in one process (the monolith), or with a topology
    one worker process per pool, restarted when it dies, rolled over to new code on
    SIGHUP, all drained on SIGTERM."""
    app = load_app(app_spec)
    path = topology or app.topology
    if path is not None:
        sys.exit(cli_pools.run_pools(app_spec, app, path, concurrency, grace, autoscale))
    if autoscale:
        raise click.UsageError(
            "--autoscale scales the pools of a topology; give --topology FILE (or "
            "App(topology=...), $OFFLOAD_TOPOLOGY) with replicas = [min, max] per pool"
        )
    _run_worker(app, None, concurrency or cli_pools.DEFAULT_CONCURRENCY, grace, burst=False)


@main.command()
@app_arg
@click.argument("task")
@click.option("--args", "args_json", help="Positional arguments as a JSON array: '[\"a\", 1]'.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--name", help="Unique task name (de-duplicates).")
@click.option("--delay", type=SECONDS, help="Seconds before it may run.")
@click.option("--queue", help="Send to this queue instead of the task's own.")
def send(
    app_spec: str,
    task: str,
    args_json: str | None,
    kwargs_json: str | None,
    name: str | None,
    delay: float | None,
    queue: str | None,
) -> None:
    """Enqueue one call of TASK (its registered name, e.g. myapp.tasks.send_email)."""
    app = load_app(app_spec)
    args = _json_arg(args_json, "--args", list)
    kwargs = _json_arg(kwargs_json, "--kwargs", dict)
    tf = _find_task(app, task)
    h = tf.send_with(args, kwargs, name=name, delay=delay, queue=queue)
    named = f" (name {h.name})" if h.name else ""
    out.say(f"enqueued {h.task} as {h.id} on queue {h.queue}{named}")


def _find_task(app: App, task: str) -> TaskFunction:
    """The task registered as ``task``, or the only one whose last dotted part it is."""
    if task in app.tasks:
        return app.get_task(task)
    matches = sorted(n for n in app.tasks if n.rsplit(".", 1)[-1] == task)
    if len(matches) == 1:
        return app.get_task(matches[0])
    if matches:
        raise UnknownTask(
            f"task {task!r} is ambiguous in app {app.name!r}: {', '.join(matches)}; "
            "give its full name"
        )
    return app.get_task(task)  # raises UnknownTask listing the names


@main.command()
@app_arg
@json_flag
@click.option("--pools", "by_pool", is_flag=True, help="One row per pool: autoscaling signals.")
@cli_pools.topology_option
def queues(app_spec: str, as_json: bool, by_pool: bool, topology: str | None) -> None:
    """Show every queue: how many tasks are in each state, how long the oldest ready one
    has waited, and the policy the broker enforces (flagging where this app's declaration
    differs: its workers would change it). With --pools, per pool what an autoscaler reads."""
    app = load_app(app_spec)
    if by_pool:
        cli_pools.show_pools(app, topology, as_json)
        return
    if topology is not None:
        raise click.UsageError("--topology only applies with --pools")
    rows = []
    now = app.registry.call(lambda b: b.now(), declare=False)
    for name, p in sorted(app.queues.items()):
        s = app.inspect(name)  # reads the broker as it is: declares nothing
        enforced = s.policy
        drift = app.policy_drift(name, enforced)
        rows.append(
            {
                "queue": name,
                "ready": s.ready,
                "scheduled": s.scheduled,
                "leased": s.leased,
                "in_flight": s.leased,
                "oldest_ready_age": None
                if s.oldest_ready_at is None
                else max(0.0, now - s.oldest_ready_at),
                "dead": s.dead,
                "paused": s.paused,
                "rate": enforced.rate if enforced else p.rate,
                "bucket": enforced.bucket if enforced else p.bucket,
                "max_concurrent": enforced.max_concurrent if enforced else p.max_concurrent,
                "lease": enforced.lease if enforced else p.lease,
                "retry_limit": p.retry.limit,
                "declared_in_broker": enforced is not None,
                "differs": {f: {"declared": a, "enforced": b} for f, (a, b) in drift.items()},
            }
        )
    if as_json:
        click.echo(out.to_json(rows))
        return
    out.queues_table(f"{app.name} on {out.redact(app.broker_url)}", rows)


@main.command()
@app_arg
@click.argument("queue")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1_000_000))
@json_flag
def dead(app_spec: str, queue: str, limit: int, as_json: bool) -> None:
    """List a queue's dead letters with their last error."""
    app = load_app(app_spec)
    items = app.dead_letters(queue, limit)
    if as_json:
        fields = ("id", "name", "task", "attempts", "error", "traceback", "failed_at")
        rows = [{f: getattr(d, f) for f in (*fields, "args", "kwargs")} for d in items]
        click.echo(out.to_json(rows))
        return
    out.dead_letters(queue, items)


@main.command()
@app_arg
@click.argument("queue")
@click.argument("task_id", required=False)
def requeue(app_spec: str, queue: str, task_id: str | None) -> None:
    """Make dead tasks ready again (one by id, or all of the queue's)."""
    n = load_app(app_spec).requeue_dead(queue, task_id)
    if task_id is not None and n == 0:
        raise click.ClickException(f"no dead task {task_id!r} in queue {queue!r}")
    out.say(f"requeued {n} task(s) on {queue}")


@main.command()
@app_arg
@click.argument("queue")
def pause(app_spec: str, queue: str) -> None:
    """Stop workers from claiming the queue's tasks."""
    load_app(app_spec).pause(queue)
    out.say(f"paused {queue}")


@main.command()
@app_arg
@click.argument("queue")
def resume(app_spec: str, queue: str) -> None:
    """Let workers claim the queue's tasks again."""
    load_app(app_spec).resume(queue)
    out.say(f"resumed {queue}")


@main.command()
@app_arg
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(app_spec: str, queue: str, yes: bool) -> None:
    """Delete every ready and scheduled task of the queue."""
    app = load_app(app_spec)
    app.policy(queue)
    if not yes and sys.stdin.isatty():
        click.confirm(f"delete every waiting task of {queue}?", abort=True)
    out.say(f"purged {app.purge(queue)} task(s) from {queue}")


@main.command()
@app_arg
@click.argument("queue")
@click.option("--id", "task_id", help="The task's id.")
@click.option("--name", help="The task's unique name.")
def delete(app_spec: str, queue: str, task_id: str | None, name: str | None) -> None:
    """Delete one task by id or name."""
    if (task_id is None) == (name is None):
        raise click.UsageError("give exactly one of --id or --name")
    if not load_app(app_spec).delete_task(queue, id=task_id, name=name):
        which = task_id if task_id is not None else name
        raise click.ClickException(f"no task {which!r} in queue {queue!r}")
    out.say("deleted")


@main.command()
@app_arg
@json_flag
def metrics(app_spec: str, as_json: bool) -> None:
    """Per task function: runs, failures, wall and CPU time measured by the workers."""
    ms = load_app(app_spec).metrics()
    rows = [
        {
            "task": m.task,
            "count": m.count,
            "failures": m.failures,
            "wall_avg": m.wall_total / m.count if m.count else 0.0,
            "wall_max": m.wall_max,
            "cpu_avg": m.cpu_total / m.count if m.count else 0.0,
            "cpu_max": m.cpu_max,
            "expired": int(m.extra.get("expired", 0)),
        }
        for m in sorted(ms, key=lambda m: m.task)
    ]
    if as_json:
        click.echo(out.to_json(rows))
        return
    out.metrics_table(rows)


cli_http.register(main)  # serve, run --http, worker --metrics-port

main.add_command(cli_pools.machines)
main.add_command(cli_pools.check)
main.add_command(cli_calls.periodic)
main.add_command(cli_profile.profile)
cli_ops.register(main)  # plan, k8s

if __name__ == "__main__":  # pragma: no cover
    main()
