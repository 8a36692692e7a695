"""The commands that read or change what a broker holds: ``send``, ``queues``, ``dead``,
``requeue``, ``pause``, ``resume``, ``purge``, ``delete`` and ``metrics``.

None of them runs in a worker, so ``cli.py`` imports this module only when one is invoked or
the commands are listed (``offload --help``): a worker process never holds it.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from . import cli_pools
from . import cli_render as out
from .cli import SECONDS, _bad, app_arg, json_flag, load_app
from .errors import UnknownTask

if TYPE_CHECKING:
    from .app import App
    from .task import TaskFunction

__all__ = ["dead", "delete", "metrics", "pause", "purge", "queues", "requeue", "resume", "send"]


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


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
@app_arg
@click.argument("queue")
@click.argument("task_id", required=False)
def requeue(app_spec: str, queue: str, task_id: str | None) -> None:
    """Make dead tasks ready again (one by id, or all of the queue's)."""
    n = load_app(app_spec).requeue_dead(queue, task_id)
    if task_id is not None and n == 0:
        raise click.ClickException(f"no dead task {task_id!r} in queue {queue!r}")
    out.say(f"requeued {n} task(s) on {queue}")


@click.command()
@app_arg
@click.argument("queue")
def pause(app_spec: str, queue: str) -> None:
    """Stop workers from claiming the queue's tasks."""
    load_app(app_spec).pause(queue)
    out.say(f"paused {queue}")


@click.command()
@app_arg
@click.argument("queue")
def resume(app_spec: str, queue: str) -> None:
    """Let workers claim the queue's tasks again."""
    load_app(app_spec).resume(queue)
    out.say(f"resumed {queue}")


@click.command()
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


@click.command()
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


@click.command()
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
