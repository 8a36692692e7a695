"""The pool commands: ``offload machines``, ``offload check``, what ``offload worker
--pool`` needs, and the supervisor behind ``offload run`` with a topology.

``offload run APP --topology FILE`` starts one ``offload worker APP --pool NAME`` process
per pool (its ``replicas`` minimum, at least one), prefixes each line they print with
``[pool.N]``, starts again one that exits on its own (waiting longer each time it dies
young), and on SIGTERM or SIGINT passes one SIGTERM to each so they drain within
``--grace``; a second signal passes another (the workers skip their grace). The workers
run in their own process group, so a terminal's Ctrl-C reaches them once, through here.

Imported by ``cli.py`` at start-up: the topology, the catalog and rich load only when a
command here needs them, never in a plain worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from . import cli_render as out
from .errors import ConfigError

if TYPE_CHECKING:
    from .app import App
    from .topology import Placement

__all__ = ["check", "machines", "pool_option", "pool_queues", "run_pools", "topology_option"]

DEFAULT_CONCURRENCY = 32
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


# -- the supervisor ----------------------------------------------------------------------------


class _Child:
    """One worker process of one pool, and the thread copying its output with a prefix."""

    def __init__(self, pool: str, index: int, argv: list[str], lock: threading.Lock) -> None:
        self.label = f"{pool}.{index}"
        self.argv = argv
        self.lock = lock
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.started = 0.0
        self.failures = 0  # deaths in a row that came soon after a start
        self.restart_at: float | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,  # a terminal's Ctrl-C reaches the worker once, through us
        )
        self.started = time.monotonic()
        self.restart_at = None
        self.reader = threading.Thread(
            target=self._copy, args=(self.proc,), name=f"offload-run-{self.label}", daemon=True
        )
        self.reader.start()
        _say(self.lock, f"[offload] started {self.label} (pid {self.proc.pid})")

    def _copy(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            _say(self.lock, f"[{self.label}] {text}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _say(lock: threading.Lock, line: str) -> None:
    with lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def run_pools(app_spec: str, app: App, topology: str, concurrency: int | None, grace: float) -> int:
    """Run one worker process per pool replica until SIGTERM/SIGINT; returns the exit
    status (0 when every worker drained cleanly)."""
    path = os.path.abspath(topology)
    placement = app.placement(path)
    lock = threading.Lock()
    children: list[_Child] = []
    for name, pool in placement.pools.items():
        served = placement.queues[name]
        if not served:
            _say(lock, f"[offload] pool {name} serves no queue (its services have no tasks)")
            continue
        app.registry.check_executors(served)  # refuse here, once, not in a restart loop
        argv = [sys.executable, "-m", "offload", "worker", app_spec, "--pool", name]
        argv += ["--topology", path, "--grace", repr(grace)]
        if concurrency is not None:
            argv += ["-c", str(concurrency)]
        for i in range(1, max(1, pool.replicas[0]) + 1):
            children.append(_Child(name, i, argv, lock))
    if not children:
        raise click.UsageError(f"{path}: no pool serves a queue; nothing to run")

    signals: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for c in children:
            c.start()
        return _supervise(children, signals, grace, lock)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _supervise(
    children: list[_Child], signals: list[int], grace: float, lock: threading.Lock
) -> int:
    passed = 0  # signals passed on to the workers
    kill_at: float | None = None
    while True:
        now = time.monotonic()
        if len(signals) > passed:
            passed = len(signals)
            word = "draining" if passed == 1 else "hurrying"
            _say(lock, f"[offload] signal received: {word} {len(children)} worker(s)")
            for c in children:
                c.signal(signal.SIGTERM)
            # past grace plus time to release and flush, stragglers are killed
            kill_at = now + (grace if passed == 1 else 0.0) + 15.0
        if passed:
            if not any(c.alive() for c in children):
                break
            if kill_at is not None and now >= kill_at:
                for c in children:
                    if c.alive():
                        _say(lock, f"[offload] {c.label} did not stop in time: killing it")
                        c.signal(signal.SIGKILL)
                kill_at = None
        else:
            for c in children:
                _watch(c, now, lock)
        time.sleep(0.05)
    status = 0
    for c in children:
        assert c.proc is not None
        rc = c.proc.wait()
        if c.reader is not None:
            c.reader.join(5)
        if rc != 0:
            _say(lock, f"[offload] {c.label} exited with status {rc}")
            status = 1
    _say(lock, "[offload] every worker stopped")
    return status


def _watch(c: _Child, now: float, lock: threading.Lock) -> None:
    """Start a worker again once it exited on its own, waiting longer (up to 30 s) the
    more often in a row it died within a minute of starting: a broken deploy must not
    spin the machine."""
    if c.restart_at is not None:
        if now >= c.restart_at:
            c.start()
        return
    assert c.proc is not None
    rc = c.proc.poll()
    if rc is None:
        return
    if c.reader is not None:
        c.reader.join(1)  # its last lines (often the reason) come before ours
    c.failures = c.failures + 1 if now - c.started < 60 else 1
    delay = min(30.0, 0.5 * 2 ** (c.failures - 1))
    _say(lock, f"[offload] {c.label} exited with status {rc}; starting it again in {delay:g}s")
    c.restart_at = now + delay
