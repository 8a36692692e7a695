"""``offload periodic APP [--json]``: each schedule with its next and last firing.

The next firing is computed from the broker's clock; the last is what the workers keeping
the schedule recorded in the broker (None: not fired since the record expired, or never).
Registered by ``cli.py``; reads only, never declares anything.
"""

from __future__ import annotations

import datetime as _dt

import click

from . import cli_render as out
from .periodic import schedule_rows

__all__ = ["periodic"]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def periodic(app_spec: str, as_json: bool) -> None:
    """List the periodic tasks: schedule, queue, next and last firing."""
    from .cli import load_app

    rows = schedule_rows(load_app(app_spec))
    if as_json:
        click.echo(out.to_json(rows))
        return
    if not rows:
        out.say("no periodic tasks")
        return
    for r in rows:
        out.say(
            f"{r['task']}  '{r['cron']}' ({r['tz']})  queue={r['queue']}  "
            f"next={_when(r['next'])}  last={_when(r['last'])}"
        )
