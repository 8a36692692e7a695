"""``offload profile APP [--json]``: what each task function and each service costs.

One row per task function (runs, failures, runs per second over the last hour, p50/p90 of
wall time, CPU time and peak RSS) and one per service, read from the workers' measurements
in the broker by :meth:`offload.App.profile` (see :mod:`offload.profile`). Registered by
``cli.py``; reads only, never declares anything. ``--json`` prints
``App.profile().to_dict()``: seconds and bytes, unrounded.
"""

from __future__ import annotations

from typing import Any

import click

from . import cli_render as out
from .profile import Profile
from .service import format_size

__all__ = ["profile"]


@click.command()
@click.argument("app_spec", metavar="MODULE:APP")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print {"tasks": [...], "services": [...]} as JSON (seconds, bytes) instead of tables.',
)
def profile(app_spec: str, as_json: bool) -> None:
    """Per task function and service: runs, rate, and p50/p90 of wall time, CPU time and
    peak memory (RSS) as the workers measured them (~: approximate, thread/async tasks)."""
    from .cli import load_app

    app = load_app(app_spec)
    got = app.profile()
    if as_json:
        click.echo(out.to_json(got.to_dict()))
        return
    render(f"{app.name} on {out.redact(app.broker_url)}", got)


def render(title: str, p: Profile) -> None:
    """Three tables: the task functions' runs, what their runs cost, the services (rich,
    markup off: names print as written). Split so that each fits 80 columns. RSS marked
    ``~`` is approximate: a thread or async task's share of the worker's growth, not a
    child process's own peak."""
    from rich import box
    from rich.table import Table

    # a narrow terminal folds a cell onto two lines rather than cut it short with "…"
    left: dict[str, Any] = {"overflow": "fold"}
    right: dict[str, Any] = {"justify": "right", "overflow": "fold"}
    runs = Table(title=f"task functions: {title}")
    for name in ("task", "service", "queue"):
        runs.add_column(name, **left)
    for name in ("runs", "failed", "rate/s"):
        runs.add_column(name, **right)
    cost = Table(title="per run: p50, p90 (max)", box=box.SIMPLE_HEAD)
    cost.add_column("task", **left)
    for name in ("wall", "cpu", "rss peak"):
        cost.add_column(name, **right)
    for t in p.tasks:
        runs.add_row(t.task, t.service, t.queue, str(t.runs), str(t.failures), _rate(t.rate))
        if t.runs == 0:
            cost.add_row(t.task, "-", "-", "-")
            continue
        mark = "" if t.rss_exact else "~"
        cost.add_row(
            t.task,
            f"{_duration(t.wall_p50)}, {_duration(t.wall_p90)} ({_duration(t.wall_max)})",
            f"{_duration(t.cpu_p50)}, {_duration(t.cpu_p90)} ({_duration(t.cpu_max)})",
            (
                f"{mark}{format_size(t.rss_peak_p50)}, {format_size(t.rss_peak_p90)} "
                f"({format_size(t.rss_peak_max)})"
                if t.rss_runs
                else "-"
            ),
        )
    out.console.print(runs)
    out.console.print(cost)
    services = Table(title="services")
    services.add_column("service", **left)
    services.add_column("executor", **left)
    for name in ("mem limit", "tasks", "runs", "failed", "rate/s"):
        services.add_column(name, **right)
    services.add_column("rss", **left)
    for s in p.services:
        services.add_row(
            s.service,
            s.executor,
            format_size(s.memory_limit),
            str(s.tasks),
            str(s.runs),
            str(s.failures),
            _rate(s.rate),
            "exact" if s.rss_exact else "~approx.",
        )
    out.console.print(services)
    if any(not s.rss_exact for s in p.services):
        out.say(
            "~ approximate: a thread or async task's RSS is its worker's growth during the "
            "run, shared with tasks running beside it",
            style="dim",
        )


def _rate(per_second: float) -> str:
    return "0" if per_second == 0 else f"{per_second:.3g}"


def _duration(seconds: float) -> str:
    """``seconds`` in the unit that reads best: 1.2s, 35.1ms, 420µs."""
    if seconds >= 1.0:
        return f"{seconds:.3g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g}ms"
    if seconds > 0:
        return f"{seconds * 1e6:.3g}µs"
    return "0"
