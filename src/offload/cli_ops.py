"""The operations commands: ``offload plan`` (the cost planner) and ``offload k8s``
(Kubernetes manifests for a topology).

The I/O lives here: reading the profile, the catalog and the topology, writing the
topology and the report. The model is :mod:`offload.planner`, the manifests
:mod:`offload.k8s`, both pure. ``cli.py`` imports this module when ``plan`` or ``k8s`` is
invoked or the commands are listed (``offload --help``), so nothing heavy is imported at
module level here either.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from . import cli_render as out
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App
    from .catalog import Machine
    from .planner import Demand, Plan

__all__ = ["k8s", "plan", "register", "topology_toml"]

_PROVIDERS = {"gcp": "gce", "gce": "gce", "aws": "aws"}
MAX_TRAFFIC = 1_000_000.0
MAX_MARGIN = 200.0  # percent


def _fail(message: str) -> ConfigError:
    from .planner import PlanError

    return PlanError(message)


# -- inputs ----------------------------------------------------------------------------------


def load_catalog_option(value: str) -> list[Machine]:
    """The shapes ``--catalog`` names: ``gcp`` (GCE) or ``aws`` from the built-in catalog,
    or a TOML file of ``[machines.NAME]`` tables with cpu, memory and price_per_hour."""
    import tomllib

    from .catalog import Machine, load_catalog
    from .service import parse_size

    provider = _PROVIDERS.get(value.lower())
    if provider is not None:
        return [m for m in load_catalog().values() if m.provider == provider]
    if not os.path.isfile(value):
        raise click.BadParameter(
            f"{value!r} is neither a built-in catalog (gcp, aws) nor a file; give "
            "--catalog gcp, --catalog aws or a TOML file of [machines.NAME] tables",
            param_hint="--catalog",
        )
    try:
        with open(value, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(f"{value}: cannot read the catalog: {exc}") from None
    table = data.get("machines")
    if not isinstance(table, dict) or not table:
        raise _fail(
            f"{value}: no [machines.NAME] table; a catalog file lists shapes with cpu, "
            'memory and price_per_hour, e.g. [machines.box] cpu = 2, memory = "8GiB", '
            "price_per_hour = 0.07"
        )
    shapes = []
    for name, m in table.items():
        where = f"{value}: machines.{name}"
        if not isinstance(m, dict):
            raise _fail(f"{where}: must be a table with cpu, memory and price_per_hour")
        for key in ("cpu", "memory", "price_per_hour"):
            if key not in m:
                raise _fail(f"{where}: {key} is missing; a catalog shape has cpu, memory, price")
        cpu, price = m["cpu"], m["price_per_hour"]
        for key, v in (("cpu", cpu), ("price_per_hour", price)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise _fail(f"{where}.{key}: {v!r} must be a number > 0")
        memory = parse_size(m["memory"], f"{where}.memory")
        shapes.append(Machine(name, float(cpu), memory, float(price), "custom"))
    return shapes


def _read_profile(app: App, path: str | None) -> Any:
    """The profile as plain data: ``--profile FILE``, else ``app.profile()``."""
    if path is None:
        profile = getattr(app, "profile", None)  # older apps may lack it
        if profile is None:
            raise _fail(
                "this offload has no app.profile() to read measurements from; pass "
                "--profile FILE holding the output of offload profile APP --json"
            )
        measured = profile()
        if hasattr(measured, "to_dict"):
            return measured.to_dict()
        import msgspec

        return msgspec.to_builtins(measured)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(f"--profile {path}: cannot read it ({exc})") from None
    if not text.strip():
        raise _fail(
            f"--profile {path}: the file is empty; write it with offload profile APP --json"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"--profile {path}: not JSON ({exc.msg} at line {exc.lineno})") from None


def _service_queues(app: App) -> dict[str, set[str]]:
    queues: dict[str, set[str]] = {name: set() for name in app.services}
    for tf in app.registry.tasks.values():
        owner = tf.service.name if tf.service is not None else "default"
        queues.setdefault(owner, set()).add(tf.queue)
    return queues


def _demands(
    app: App, data: Any, traffic: float
) -> tuple[dict[str, Demand], list[str], dict[str, set[str]]]:
    """Measured demand per service, with every other service of the app that has task
    functions as a zero demand (placed by the search, listed as unmeasured)."""
    from .plan_input import parse_profile
    from .planner import Demand, demands

    tasks, executors = parse_profile(data)
    queues = _service_queues(app)
    for t in tasks:
        if t.service not in app.services:
            raise _fail(
                f"the profile measures service {t.service!r} (task {t.task!r}), which app "
                f"{app.name!r} does not declare (it has {', '.join(sorted(app.services))}); "
                "profile this app again"
            )
        queues[t.service].add(t.queue)
    measured = demands(tasks, executors, traffic)
    unmeasured = []
    for name, svc in sorted(app.services.items()):
        if name not in measured and svc.tasks:
            unmeasured.append(name)
            measured[name] = Demand(name, svc.executor, 0.0, 0.0, 0.0, 0, 0)
    return measured, unmeasured, queues


# -- the topology file -----------------------------------------------------------------------


def _toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a TOML basic string for names like ours


def topology_toml(plan: Plan, on_oom: Mapping[str, str], builtin: Mapping[str, Machine]) -> str:
    """The plan as a topology file ``offload check`` accepts: per pool its services, shape,
    replicas ``[plan, headroom]`` and concurrency; custom shapes as ``[machines.NAME]``;
    ``on_oom`` queues (queue -> the pool to serve it) as that pool's ``queues``."""
    from .planner import max_replicas

    lines = [
        "# Written by offload plan: the cheapest pools for the measured demand at "
        f"traffic x{plan.traffic:g}, margin {plan.margin:.0%}.",
        f"# Monthly: ${plan.monthly_cost:,.2f} (monolith ${plan.monolith.monthly_cost:,.2f}, "
        f"saving {plan.saving:.1f}%). replicas = [planned, {2:g}x headroom].",
        "",
    ]
    custom = {
        p.machine.name: p.machine for p in plan.pools if builtin.get(p.machine.name) != p.machine
    }
    for m in custom.values():
        lines += [
            f"[machines.{_toml_str(m.name)}]",
            f"cpu = {m.cpu!r}",
            f"memory = {m.memory}",
            f"price_per_hour = {m.price_per_hour!r}",
            "",
        ]
    for p in plan.pools:
        lines += [
            f"[pools.{_toml_str(p.name)}]",
            f"services = [{', '.join(_toml_str(s) for s in p.services)}]",
            f"machine = {_toml_str(p.machine.name)}",
            f"replicas = [{p.replicas}, {max_replicas(p.replicas)}]",
            f"concurrency = {p.concurrency}",
        ]
        extra = sorted(q for q, pool in on_oom.items() if pool == p.name)
        if extra:
            lines.append(f"queues = [{', '.join(_toml_str(q) for q in extra)}]")
        lines.append("")
    return "\n".join(lines)


def _on_oom_queues(app: App, plan: Plan) -> dict[str, str]:
    """Escalation queues no pool serves as a task queue, given to the pool whose replicas
    have the most memory (the one a task killed for memory should move to)."""
    served = {tf.queue for tf in app.registry.tasks.values()}
    wanted = {tf.on_oom for tf in app.registry.tasks.values() if tf.on_oom} - served
    if not wanted:
        return {}
    big = max(plan.pools, key=lambda p: (p.machine.memory, p.name))
    return {q: big.name for q in wanted if q is not None}


# -- output ----------------------------------------------------------------------------------


def _money(x: float) -> str:
    return f"${x:,.2f}"


def _print_plan(plan: Plan, catalog: str) -> None:
    from rich.table import Table

    from .service import format_size

    demand = Table(
        title=f"demand at traffic x{plan.traffic:g} (before the {plan.margin:.0%} margin)"
    )
    for col in ("service", "executor", "runs/s", "cores", "in flight", "per task", "memory"):
        demand.add_column(col, justify="left" if col in ("service", "executor") else "right")
    for d in plan.demands.values():
        unmeasured = d.service in plan.unmeasured
        demand.add_row(
            d.service + (" (unmeasured)" if unmeasured else ""),
            d.executor,
            f"{d.rate:.3g}",
            f"{d.cores:.3g}",
            f"{d.slots:.3g}",
            format_size(d.slot_memory or None),
            format_size(d.memory or None),
        )
    out.console.print(demand)
    table = Table(title=f"plan on the {catalog} catalog ({730} hours a month)")
    for col in ("pool", "services", "machine", "replicas", "concurrency", "monthly"):
        table.add_column(
            col, justify="right" if col in ("replicas", "concurrency", "monthly") else "left"
        )
    for p in plan.pools:
        table.add_row(
            p.name, ", ".join(p.services), p.machine.name, str(p.replicas),
            str(p.concurrency), _money(p.monthly_cost),
        )  # fmt: skip
    table.add_section()
    table.add_row("plan", "", "", "", "", _money(plan.monthly_cost), style="bold")
    m = plan.monolith
    table.add_row(
        "monolith", ", ".join(m.services), m.machine.name, str(m.replicas),
        str(m.concurrency), _money(m.monthly_cost),
    )  # fmt: skip
    if plan.current is not None:
        table.add_row("current", "", "", "", "", _money(sum(p.monthly_cost for p in plan.current)))
    out.console.print(table)
    out.say(f"saving: {plan.saving:.1f}% against the monolith", style="bold")
    for note in plan.notes:
        out.say(f"note: {note}")


def _check_range(name: str, value: float, low: float, high: float, unit: str) -> None:
    if not (math.isfinite(value) and low < value <= high):
        raise click.BadParameter(
            f"{value!r}: must be more than {low:g} and at most {high:g}{unit}", param_hint=name
        )


@click.command("plan")
@click.argument("app_spec", metavar="MODULE:APP")
@click.option(
    "--topology", type=click.Path(dir_okay=False),
    help="A topology to price for the same demand (default: the app's, if any).",
)  # fmt: skip
@click.option(
    "--profile", "profile_path", type=click.Path(dir_okay=False),
    help="The output of `offload profile APP --json` (default: read the broker).",
)  # fmt: skip
@click.option(
    "--catalog", default="gcp", show_default=True,
    help="Shapes to choose from: gcp, aws, or a TOML file of [machines.NAME] tables.",
)  # fmt: skip
@click.option(
    "--traffic", type=float, default=1.0, show_default=True,
    help="Multiplier on the measured arrival rates (10: ten times the traffic).",
)  # fmt: skip
@click.option(
    "--margin", type=float, default=15.0, show_default=True,
    help="Safety margin in percent on cores and per-task memory (0-200).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--write", type=click.Path(dir_okay=False), help="Write the plan as a topology.")
@click.option("--report", type=click.Path(file_okay=False), help="Write a Markdown report here.")
def plan(
    app_spec: str,
    topology: str | None,
    profile_path: str | None,
    catalog: str,
    traffic: float,
    margin: float,
    as_json: bool,
    write: str | None,
    report: str | None,
) -> None:
    """Recommend pools, machine shapes and replicas for the measured demand at the lowest
    monthly price, against the monolith priced the same way."""
    from . import planner
    from .catalog import load_catalog
    from .cli import load_app

    _check_range("--traffic", traffic, 0.0, MAX_TRAFFIC, "")
    if not (math.isfinite(margin) and 0 <= margin <= MAX_MARGIN):
        raise click.BadParameter(
            f"{margin!r}: must be a percentage from 0 to {MAX_MARGIN:g}", param_hint="--margin"
        )
    shapes = load_catalog_option(catalog)
    app = load_app(app_spec)
    demand, unmeasured, queues = _demands(app, _read_profile(app, profile_path), traffic)
    result = planner.plan(
        demand, shapes, margin=margin / 100, traffic=traffic, queues=queues,
        unmeasured=unmeasured,
    )  # fmt: skip
    notes = []
    if unmeasured:
        notes.append(
            f"no runs measured for {', '.join(unmeasured)}: placed with the others, not sized"
        )
    path = topology or app.topology
    if path is not None:
        placement = app.placement(path)
        pools = [(p.name, p.services, p.machine) for p in placement.pools.values() if p.machine]
        current = planner.price_pools(pools, demand, margin / 100)
        if current is None:
            notes.append(f"{path}: a pool's shape cannot carry its services (or has no price)")
        result = replace(result, current=current)
    result = replace(result, notes=tuple(notes))
    if write is not None:
        text = topology_toml(result, _on_oom_queues(app, result), load_catalog())
        with open(write, "w", encoding="utf-8") as f:
            f.write(text)
        app.placement(write)  # what we wrote must place: a fault here is ours, said at once
    if report is not None:
        from .plan_report import write_report

        write_report(result, report, app_name=app.name, catalog=catalog)
    if as_json:
        click.echo(out.to_json({**result.as_dict(), "catalog": catalog}))
        return
    _print_plan(result, catalog)
    if write is not None:
        out.say(f"wrote {write}: check it with offload check {app_spec} --topology {write}")
    if report is not None:
        out.say(f"wrote the report to {os.path.join(report, 'report.md')}")


@click.command("k8s")
@click.argument("app_spec", metavar="MODULE:APP")
@click.option(
    "--topology", type=click.Path(dir_okay=False),
    help="The topology to deploy (default: the app's, from App(topology=...) or "
    "$OFFLOAD_TOPOLOGY).",
)  # fmt: skip
@click.option("--image", required=True, help="The container image holding the app.")
@click.option("--namespace", default="default", show_default=True)
@click.option(
    "--broker-url-secret", "secret", default="offload-broker", show_default=True,
    help="Secret whose key `url` is the broker URL (OFFLOAD_BROKER) and, if the URL has "
    "a password, whose key `password` the KEDA scaler reads.",
)  # fmt: skip
@click.option(
    "--grace", type=float, default=30.0, show_default=True,
    help="Seconds a worker drains on SIGTERM; the pod gets 15 more.",
)  # fmt: skip
@click.option(
    "--scaler", type=click.Choice(["auto", "prometheus"]), default="auto", show_default=True,
    help="auto: KEDA's scaler for the broker (redis, postgresql); prometheus: offload's "
    "/metrics through Prometheus.",
)  # fmt: skip
@click.option("--prometheus-url", help="Prometheus server for the prometheus scaler.")
def k8s(
    app_spec: str,
    topology: str | None,
    image: str,
    namespace: str,
    secret: str,
    grace: float,
    scaler: str,
    prometheus_url: str | None,
) -> None:
    """Print Kubernetes manifests for the topology: per pool a Deployment of workers, a
    KEDA ScaledObject and a PodDisruptionBudget, as one YAML stream."""
    from . import k8s as kube
    from .cli import load_app
    from .cli_pools import DEFAULT_CONCURRENCY

    if not (math.isfinite(grace) and 0 <= grace <= 86_400):
        raise click.BadParameter(f"{grace!r}: seconds from 0 to 86400", param_hint="--grace")
    for name, value in (("--namespace", namespace), ("--broker-url-secret", secret)):
        if kube.dns_name(value) != value:
            raise click.BadParameter(
                f"{value!r} is not a Kubernetes name (lowercase letters, digits, '-')",
                param_hint=name,
            )
    app = load_app(app_spec)
    path = topology or app.topology
    if path is None:
        raise click.UsageError(
            "give --topology FILE (or App(topology=...) / $OFFLOAD_TOPOLOGY): the pools to deploy"
        )
    placement = app.placement(path)
    for pool_name, queues in placement.queues.items():
        try:
            app.registry.check_executors(queues)
        except ConfigError as exc:
            raise ConfigError(f"pool {pool_name!r}: {exc}") from None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    opts = kube.K8sOptions(
        app_spec=app_spec, app_name=app.name, image=image, broker_url=app.broker_url,
        namespace=namespace, secret=secret, grace=grace, scaler=scaler,
        prometheus_url=prometheus_url,
    )  # fmt: skip
    docs = kube.manifests(
        opts, list(placement.pools.values()), placement.queues, text, DEFAULT_CONCURRENCY
    )
    click.echo(kube.to_yaml(docs), nl=False)


def register(main: click.Group, commands: Sequence[click.Command] = (plan, k8s)) -> None:
    """Add ``plan`` and ``k8s`` to the CLI."""
    for command in commands:
        main.add_command(command)
