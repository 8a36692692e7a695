"""The pool commands: ``offload machines``, ``offload check``, what ``offload worker
--pool`` needs, what ``offload run`` with a topology starts, and the per-pool signals of
``offload queues --pools``.

``offload run APP --topology FILE [--autoscale]`` hands the pools to
:class:`offload.supervisor.Supervisor`: one ``offload worker APP --pool NAME`` process per
pool replica (its minimum, at least one; with ``--autoscale`` between its ``replicas``
bounds), logs prefixed with ``[pool.N]``, crashed workers started again, a rolling
restart on SIGHUP, all drained on SIGTERM.

Imported by ``cli.py`` at start-up: the topology, the catalog, the autoscaler and rich load
only when a command here needs them, never in a plain worker.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from . import cli_render as out
from .core.policy import DEFAULT_CONCURRENCY
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App
    from .topology import Placement

__all__ = [
    "check",
    "machines",
    "pool_option",
    "pool_queues",
    "pool_rows",
    "run_pools",
    "topology_option",
]

HOURS_PER_MONTH = 730  # what both providers' calculators bill a month as

topology_option = click.option(
    "--topology",
    type=click.Path(dir_okay=False),
    help="Topology file placing services in pools (default: the app's, from "
    "App(topology=...) or $OFFLOAD_TOPOLOGY).",
)
pool_option = click.option(
    "--pool",
    help="Serve the queues of this pool's services, with the pool's concurrency unless "
    "-c is given (see --topology; without one the only pool is 'all').",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def pool_queues(
    app: App, pool: str, topology: str | None, queues: str | None, concurrency: int | None
) -> tuple[list[str], int]:
    """The queues and concurrency of ``offload worker --pool``: the pool's, checked."""
    if queues is not None:
        raise click.UsageError(
            "give --pool or --queues, not both: a pool's queues are those of its services"
        )
    placement = app.placement(topology)
    chosen = placement.pool(pool)
    served = list(placement.queues[pool])
    if not served:
        raise click.UsageError(
            f"--pool {pool}: its services ({', '.join(chosen.services)}) have no task "
            "functions, so it serves no queue; place services with tasks in it"
        )
    app.registry.check_executors(served)
    return served, concurrency or chosen.concurrency or DEFAULT_CONCURRENCY


@click.command()
@json_option
def machines(as_json: bool) -> None:
    """List the built-in machine shapes: vCPUs, memory, on-demand price per hour."""
    from .catalog import load_catalog, providers
    from .service import format_size

    shapes = list(load_catalog().values())
    sources = providers()
    if as_json:
        click.echo(
            out.to_json(
                {
                    "machines": [m.as_dict() for m in shapes],
                    "providers": {
                        n: {
                            "region": p.region,
                            "currency": p.currency,
                            "prices_as_of": p.prices_as_of,
                            "source": p.source,
                        }
                        for n, p in sources.items()
                    },
                }
            )
        )
        return
    from rich.table import Table

    table = Table(title="machine shapes (on-demand, Linux)")
    table.add_column("machine", no_wrap=True)
    table.add_column("provider")
    for col in ("vCPU", "memory", "$/hour", "$/month"):
        table.add_column(col, justify="right")
    for m in shapes:
        price = m.price_per_hour or 0.0
        table.add_row(
            m.name,
            f"{m.provider} {sources[m.provider].region}",
            f"{m.cpu:g}",
            format_size(m.memory),
            f"{price:.4f}",
            f"{price * HOURS_PER_MONTH:.2f}",
        )
    out.console.print(table)
    for name, p in sources.items():
        out.say(f"{name}: {p.region}, {p.currency}, prices as of {p.prices_as_of}; {p.source}")


def _placement_rows(placement: Placement, app: App) -> list[dict[str, Any]]:
    rows = []
    for pool in placement.pools.values():
        m = pool.machine
        rows.append(
            {
                "pool": pool.name,
                "machine": m.as_dict() if m is not None else None,
                "replicas": list(pool.replicas),
                "concurrency": pool.concurrency,
                "target_latency": pool.target_latency,
                "cooldown": pool.cooldown,
                "services": [
                    {
                        "service": s,
                        "executor": app.services[s].executor,
                        "memory": app.services[s].memory,
                        "cpu": app.services[s].cpu,
                        "memory_limit": app.services[s].memory_limit,
                        "tasks": sorted(app.services[s].tasks),
                    }
                    for s in pool.services
                ],
                "queues": list(placement.queues[pool.name]),
            }
        )
    return rows


@click.command()
@click.argument("app_spec", metavar="MODULE:APP")
@topology_option
@json_option
def check(app_spec: str, topology: str | None, as_json: bool) -> None:
    """Check the topology against the app and print which pool runs what."""
    from .cli import load_app
    from .service import format_size

    app = load_app(app_spec)
    placement = app.placement(topology)
    for name, queues in placement.queues.items():
        try:
            app.registry.check_executors(queues)
        except ConfigError as exc:
            raise ConfigError(f"pool {name!r}: {exc}") from None
    rows = _placement_rows(placement, app)
    if as_json:
        click.echo(out.to_json({"topology": placement.path, "pools": rows}))
        return
    where = placement.path or "no topology: every service in one pool"
    out.say(f"{app.name}: {where}", style="bold")
    for r in rows:
        m = r["machine"]
        shape = (
            f"{m['name']} ({m['cpu']:g} vCPU, {format_size(m['memory'])}"
            + (f", ${m['price_per_hour']:.4f}/h)" if m["price_per_hour"] is not None else ")")
            if m
            else "any machine"
        )
        lo, hi = r["replicas"]
        conc = r["concurrency"] or DEFAULT_CONCURRENCY
        out.say(f"pool {r['pool']}: {shape}, replicas {lo}-{hi}, concurrency {conc}")
        for s in r["services"]:
            limit = f", memory_limit {format_size(s['memory_limit'])}" if s["memory_limit"] else ""
            out.say(
                f"  service {s['service']} (executor {s['executor']}{limit}): "
                f"{len(s['tasks'])} task function(s)"
            )
        out.say(f"  queues: {', '.join(r['queues']) or '-'}")
    out.say("ok")


# -- offload run --topology, and the signals an autoscaler reads --------------------------------


def run_pools(
    app_spec: str,
    app: App,
    topology: str,
    concurrency: int | None,
    grace: float,
    autoscale: bool = False,
) -> int:
    """Run each pool's workers until SIGTERM/SIGINT (see :mod:`offload.supervisor`): its
    ``replicas`` minimum (at least one), or with ``autoscale`` between its minimum and
    maximum as the queues need. Returns the exit status (0 when every worker drained
    cleanly)."""
    from .autoscale import ScalePolicy
    from .supervisor import Supervisor

    path = os.path.abspath(topology)
    placement = app.placement(path)
    pools = {}
    for name, pool in placement.pools.items():
        served = placement.queues[name]
        if not served:
            click.echo(
                f"[offload] pool {name} serves no queue (its services have no tasks)", err=True
            )
            continue
        app.registry.check_executors(served)  # refuse here, once, not in a restart loop
        caps = [app.registry.policy(q).max_concurrent for q in served]
        pools[name] = (served, ScalePolicy.for_pool(pool, concurrency, caps))
    if not pools:
        raise click.UsageError(f"{path}: no pool serves a queue; nothing to run")
    sup = Supervisor(
        app_spec, app, path, pools, concurrency=concurrency, grace=grace, autoscale=autoscale
    )
    return sup.run()


def pool_rows(app: App, topology: str | None) -> list[dict[str, Any]]:
    """Per pool, what an autoscaler reads (``offload queues --pools``): its queues' ready
    tasks, tasks in flight, the oldest wait, its per-worker concurrency and bounds, and
    ``workers_needed``, the count that would hold all of it at once within the bounds."""
    from .autoscale import ScalePolicy, pool_signals, workers_needed
    from .supervisor import read_signals

    placement = app.placement(topology)
    served = sorted({q for qs in placement.queues.values() for q in qs})
    by_queue = read_signals(app, served) if served else {}
    rows = []
    for name, pool in placement.pools.items():
        queues = placement.queues[name]
        sig = pool_signals(by_queue[q] for q in queues)
        policy = ScalePolicy.for_pool(pool, None, [_cap(app, q) for q in queues])
        rows.append(
            {
                "pool": name,
                "queues": list(queues),
                "ready": sig.ready,
                "in_flight": sig.in_flight,
                "oldest_ready_age": sig.oldest_ready_age,
                "concurrency": policy.concurrency,
                "replicas": [policy.minimum, policy.maximum],
                "target_latency": policy.target_latency,
                "cooldown": policy.cooldown,
                "workers_needed": workers_needed(sig, policy),
            }
        )
    return rows


def show_pools(app: App, topology: str | None, as_json: bool) -> None:
    """``offload queues --pools``: :func:`pool_rows` as JSON or one line per pool."""
    rows = pool_rows(app, topology)
    if as_json:
        click.echo(out.to_json(rows))
        return
    for r in rows:
        age = r["oldest_ready_age"]
        waited = "nothing waits" if age is None else f"oldest waited {age:.1f}s"
        lo, hi = r["replicas"]
        out.say(
            f"pool {r['pool']}: {r['ready']} ready, {waited} (target "
            f"{r['target_latency']:g}s), {r['in_flight']} in flight at {r['concurrency']} per "
            f"worker: {r['workers_needed']} worker(s) needed of {lo}-{hi}"
        )


def _cap(app: App, queue: str) -> int | None:
    """A queue's ``max_concurrent`` as the app declares it (None: unbounded or unknown)."""
    policy = app.registry.queues.get(queue)
    return None if policy is None else policy.max_concurrent
