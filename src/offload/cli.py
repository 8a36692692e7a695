"""The ``offload`` command: thin calls into the library, one clear line on any error."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
import time
from typing import Any

import click

from .app import App
from .errors import OffloadError
from .worker import Worker


def _rich(stderr: bool = False):
    """rich is imported on first output, not at start-up: a worker process never prints a
    table, and the import would cost it ~2 MB of resident memory."""
    from rich.console import Console

    return Console(stderr=stderr)


class _LazyConsole:
    def __init__(self, stderr: bool = False) -> None:
        self._stderr, self._console = stderr, None

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._console is None:
            self._console = _rich(self._stderr)
        self._console.print(*args, **kwargs)


console = _LazyConsole()
err_console = _LazyConsole(stderr=True)


def Table(*args: Any, **kwargs: Any) -> Any:  # rich.s class, imported lazily
    from rich.table import Table as _Table

    return _Table(*args, **kwargs)


__all__ = ["load_app", "main"]


def _bad(where: str, message: str) -> click.ClickException:
    """One line on stderr naming the bad value, exit status 1 (no usage banner)."""
    return click.ClickException(f"{where}: {message}")


def load_app(spec: str) -> App:
    """Import ``module:attribute`` (or ``module`` holding ``app``) and return the App."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise _bad("MODULE:APP", f"{spec!r}: expected MODULE:APP, e.g. myproject.tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise _bad(
                "MODULE:APP",
                f"{spec!r}: no module named {exc.name!r} (run from the "
                "directory that contains it, or set PYTHONPATH)",
            ) from None
        raise
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise _bad("MODULE:APP", f"{spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, App):
        raise _bad("MODULE:APP", f"{spec!r} is a {type(obj).__name__}, not an offload.App")
    return obj


def _json_arg(value: str | None, what: str, kind: type) -> Any:
    if value is None:
        return kind()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise _bad(what, f"invalid JSON {value!r}: {exc.msg} at column {exc.colno}") from None
    if not isinstance(parsed, kind):
        raise _bad(what, f"{value!r} must be a JSON {'array' if kind is list else 'object'}")
    return parsed


class _Group(click.Group):
    """Turns offload errors into one line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OffloadError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="offload")
def main() -> None:
    """offload: durable task queues that grow a monolith into services."""


app_arg = click.argument("app_spec", metavar="MODULE:APP")
json_flag = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _queue_list(app: App, queues: str | None) -> list[str] | None:
    if not queues:
        return None
    names = [q.strip() for q in queues.split(",") if q.strip()]
    for q in names:
        app._policy(q)
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
    )
    names = ", ".join(worker.queues)
    logging.getLogger("offload.worker").info(
        "worker pid %d on %s, queues: %s, concurrency %d",
        os.getpid(),
        app.broker_url,
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


@main.command()
@app_arg
@click.option("--queues", "-q", help="Comma-separated queues to serve (default: all).")
@click.option(
    "--concurrency",
    "-c",
    default=32,
    show_default=True,
    type=click.IntRange(1),
    help="Tasks in flight at once.",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds running tasks get to finish on SIGTERM.",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
def worker(app_spec: str, queues: str | None, concurrency: int, grace: float, burst: bool) -> None:
    """Run a worker for some or all of the app's queues."""
    app = load_app(app_spec)
    _run_worker(app, _queue_list(app, queues), concurrency, grace, burst)


@main.command()
@app_arg
@click.option("--concurrency", "-c", default=32, show_default=True, type=click.IntRange(1))
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(0))
def run(app_spec: str, concurrency: int, grace: float) -> None:
    """Run the whole app in one process: every queue (the monolith)."""
    app = load_app(app_spec)
    _run_worker(app, None, concurrency, grace, burst=False)


@main.command()
@app_arg
@click.argument("task")
@click.option("--args", "args_json", help="Positional arguments as a JSON array: '[\"a\", 1]'.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments as a JSON object.")
@click.option("--name", help="Unique task name (de-duplicates).")
@click.option("--delay", type=click.FloatRange(0), help="Seconds before it may run.")
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
    console.print(
        f"enqueued {h.task} as {h.id} on queue {h.queue}" + (f" (name {h.name})" if h.name else ""),
        highlight=False,
    )


def _find_task(app: App, task: str):
    if task in app.tasks:
        return app.get_task(task)
    # accept the short name when it is unambiguous
    matches = [t for n, t in app.tasks.items() if n.rsplit(".", 1)[-1] == task]
    if len(matches) == 1:
        return matches[0]
    return app.get_task(task)  # raises UnknownTask listing the names


@main.command()
@app_arg
@json_flag
def queues(app_spec: str, as_json: bool) -> None:
    """Show every queue: its policy and how many tasks are in each state."""
    app = load_app(app_spec)
    rows = []
    for name, p in sorted(app.queues.items()):
        s = app.stats(name)
        rows.append(
            {
                "queue": name,
                "ready": s.ready,
                "scheduled": s.scheduled,
                "leased": s.leased,
                "dead": s.dead,
                "paused": s.paused,
                "rate": p.rate,
                "bucket": p.bucket,
                "max_concurrent": p.max_concurrent,
                "lease": p.lease,
                "retry_limit": p.retry.limit,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{app.name} on {app.broker_url}")
    for col in (
        "queue",
        "ready",
        "sched",
        "leased",
        "dead",
        "paused",
        "rate/s",
        "max conc",
        "lease s",
        "retries",
    ):
        if col == "queue":
            table.add_column(col, no_wrap=True, min_width=max(len(r["queue"]) for r in rows))
        else:
            table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["queue"],
            str(r["ready"]),
            str(r["scheduled"]),
            str(r["leased"]),
            str(r["dead"]),
            "yes" if r["paused"] else "",
            _fmt(r["rate"]),
            _fmt(r["max_concurrent"]),
            _fmt(r["lease"]),
            _fmt(r["retry_limit"]),
        )
    console.print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@main.command()
@app_arg
@click.argument("queue")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@json_flag
def dead(app_spec: str, queue: str, limit: int, as_json: bool) -> None:
    """List a queue's dead letters with their last error."""
    app = load_app(app_spec)
    items = app.dead_letters(queue, limit)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "name": d.name,
                        "task": d.task,
                        "attempts": d.attempts,
                        "error": d.error,
                        "traceback": d.traceback,
                        "failed_at": d.failed_at,
                        "args": d.args,
                        "kwargs": d.kwargs,
                    }
                    for d in items
                ],
                indent=2,
                default=repr,
            )
        )
        return
    console.print(f"[bold]{len(items)} dead letter(s) in {queue}[/bold]")
    for d in items:
        label = f" name={d.name}" if d.name else ""
        console.print(f"{d.id}  {d.task}{label}  attempts={d.attempts}", highlight=False)
        console.print(f"    {d.error}", highlight=False, soft_wrap=True)


@main.command()
@app_arg
@click.argument("queue")
@click.argument("task_id", required=False)
def requeue(app_spec: str, queue: str, task_id: str | None) -> None:
    """Make dead tasks ready again (one by id, or all of the queue's)."""
    n = load_app(app_spec).requeue_dead(queue, task_id)
    if task_id and n == 0:
        raise click.ClickException(f"no dead task {task_id!r} in queue {queue!r}")
    console.print(f"requeued {n} task(s) on {queue}")


@main.command()
@app_arg
@click.argument("queue")
def pause(app_spec: str, queue: str) -> None:
    """Stop workers from claiming the queue's tasks."""
    load_app(app_spec).pause(queue)
    console.print(f"paused {queue}")


@main.command()
@app_arg
@click.argument("queue")
def resume(app_spec: str, queue: str) -> None:
    """Let workers claim the queue's tasks again."""
    load_app(app_spec).resume(queue)
    console.print(f"resumed {queue}")


@main.command()
@app_arg
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(app_spec: str, queue: str, yes: bool) -> None:
    """Delete every ready and scheduled task of the queue."""
    app = load_app(app_spec)
    app._policy(queue)
    if not yes and sys.stdin.isatty():
        click.confirm(f"delete every waiting task of {queue}?", abort=True)
    console.print(f"purged {app.purge(queue)} task(s) from {queue}")


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
        raise click.ClickException(f"no task {task_id or name!r} in queue {queue!r}")
    console.print("deleted")


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
        }
        for m in sorted(ms, key=lambda m: m.task)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="task metrics")
    for col in ("task", "count", "failures", "wall avg ms", "wall max ms", "cpu avg ms"):
        table.add_column(col, justify="left" if col == "task" else "right", no_wrap=col == "task")
    for r in rows:
        table.add_row(
            r["task"],
            str(r["count"]),
            str(r["failures"]),
            f"{r['wall_avg'] * 1e3:.2f}",
            f"{r['wall_max'] * 1e3:.2f}",
            f"{r['cpu_avg'] * 1e3:.2f}",
        )
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
