"""The cost planner's model: demand per service, pools sized on machine shapes, the
cheapest grouping of services into pools, and the monolith priced the same way.

Pure: no I/O, no broker, no clock. ``offload plan`` (``cli_ops``) reads the profile and
the catalog and hands them here; docs/operations.md states the method with its formulas.

In short, per service, from the measured task rows (``offload profile --json``) and a
``traffic`` multiplier on their arrival rates ``λ``:

* cores ``C = Σ λ · cpu_p90``: CPU seconds per second (Kubernetes' VPA recommender also
  targets the 90th percentile of CPU use);
* slots ``L = Σ λ · wall_p90``: tasks in flight (Little's law);
* slot memory ``r = max rss_peak_p90`` of its tasks; the largest run seen must fit too.

A pool of services on ``n`` replicas of a shape (one worker process per replica) runs
``c = ceil(L / n)`` slots per replica, each able to take any of the pool's tasks, so a
replica must hold ``BASE_MEMORY + c · r_max · (1 + margin)`` and the pool needs
``n · cores_per_replica >= C · (1 + margin)``: a safety margin on both, like VPA's 15%.
The cheapest feasible ``(shape, n)`` prices the pool; set partitions of the services (up
to :data:`EXHAUSTIVE_LIMIT` groups, greedy merging past it) find the cheapest plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .catalog import Machine
from .errors import ConfigError

if TYPE_CHECKING:
    from .plan_input import TaskProfile

__all__ = [
    "BASE_MEMORY",
    "DEFAULT_MARGIN",
    "EXHAUSTIVE_LIMIT",
    "HOURS_PER_MONTH",
    "Demand",
    "Plan",
    "PlanError",
    "PoolPlan",
    "allocatable",
    "demands",
    "max_replicas",
    "plan",
    "price_pools",
    "size_pool",
]

HOURS_PER_MONTH = 730  # what both providers' calculators bill a month as
DEFAULT_MARGIN = 0.15  # VPA's recommendation-margin-fraction default
#: what one worker process holds before any task: an idle offload worker with its broker
#: driver is ~47 MiB resident; the rest is room for the app's own imports. A replica is
#: never sized below this, however idle its services (VPA keeps a floor too, 250 MB a pod).
BASE_MEMORY = 128 * 1024**2
#: one worker process runs Python under one GIL: with the thread executor a replica uses
#: at most this many cores, whatever its shape has (the process executor uses them all)
THREAD_CORES = 1.0
EXHAUSTIVE_LIMIT = 8  # groups of services searched over every set partition (Bell(8)=4140)
HEADROOM = 2.0  # a written topology's max replicas: this times the plan's (at least +1)
_EPS = 1e-9
_GIB = 1024**3
_MIB = 1024**2


class PlanError(ConfigError):
    """Input the planner cannot plan from (an empty or partial profile, a bad flag, a
    catalog without prices, a task no shape can hold): the message says what and how."""


@dataclass(frozen=True, slots=True)
class Demand:
    """What one service needs at the planned traffic (before the margin)."""

    service: str
    executor: str
    rate: float  # runs per second
    cores: float  # C = Σ λ·cpu_p90
    slots: float  # L = Σ λ·wall_p90 (Little's law)
    slot_memory: int  # r = max rss_peak_p90 of its tasks
    largest: int  # max rss_peak_max: one run that must fit a replica

    @property
    def memory(self) -> int:
        """Bytes in flight at once: ``slots · slot_memory`` (before the margin)."""
        return math.ceil(self.slots * self.slot_memory)


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """A pool sized on one shape: ``replicas`` worker processes of ``concurrency`` slots."""

    name: str
    services: tuple[str, ...]
    machine: Machine
    replicas: int
    concurrency: int
    monthly_cost: float
    cores: float  # needed, with the margin
    replica_memory: int  # needed per replica: base + concurrency · slot memory, margin in

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "services": list(self.services),
            "machine": self.machine.name,
            "replicas": self.replicas,
            "replicas_max": max_replicas(self.replicas),
            "concurrency": self.concurrency,
            "monthly_cost": round(self.monthly_cost, 2),
            "cpu": self.machine.cpu,
            "memory": self.machine.memory,
            "price_per_hour": self.machine.price_per_hour,
            "cores_needed": round(self.cores, 4),
            "replica_memory_needed": self.replica_memory,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """The cheapest pools found, the monolith priced the same way, and the saving in
    percent of the monolith's monthly cost."""

    pools: tuple[PoolPlan, ...]
    monolith: PoolPlan
    demands: Mapping[str, Demand]
    traffic: float
    margin: float
    unmeasured: tuple[str, ...] = ()  # services with no runs: placed, not sized
    current: tuple[PoolPlan, ...] | None = None  # a given topology sized for the demand
    notes: tuple[str, ...] = field(default=())

    @property
    def monthly_cost(self) -> float:
        return sum(p.monthly_cost for p in self.pools)

    @property
    def saving(self) -> float:
        mono = self.monolith.monthly_cost
        return 0.0 if mono <= 0 else (mono - self.monthly_cost) / mono * 100.0

    def as_dict(self) -> dict[str, Any]:
        current = None if self.current is None else sum(p.monthly_cost for p in self.current)
        return {
            "pools": [p.as_dict() for p in self.pools],
            "monthly_cost": round(self.monthly_cost, 2),
            "monolith": self.monolith.as_dict(),
            "monolith_monthly_cost": round(self.monolith.monthly_cost, 2),
            "saving": round(self.saving, 2),
            "current_monthly_cost": None if current is None else round(current, 2),
            "current": None if self.current is None else [p.as_dict() for p in self.current],
            "demand": [
                {
                    "service": d.service,
                    "executor": d.executor,
                    "rate": d.rate,
                    "cores": d.cores,
                    "concurrency": d.slots,
                    "slot_memory": d.slot_memory,
                    "memory": d.memory,
                    "largest": d.largest,
                }
                for d in self.demands.values()
            ],
            "unmeasured": list(self.unmeasured),
            "traffic": self.traffic,
            "margin": self.margin,
            "base_memory": BASE_MEMORY,
            "hours_per_month": HOURS_PER_MONTH,
            "notes": list(self.notes),
        }


def max_replicas(replicas: int) -> int:
    """A written topology's upper bound: :data:`HEADROOM` times the plan, at least one more."""
    return max(replicas + 1, math.ceil(replicas * HEADROOM))


def demands(
    tasks: Sequence[TaskProfile], executors: Mapping[str, str], traffic: float = 1.0
) -> dict[str, Demand]:
    """Each measured service's demand at ``traffic`` times the measured arrival rates."""
    by_service: dict[str, list[TaskProfile]] = {}
    for t in tasks:
        by_service.setdefault(t.service, []).append(t)
    out: dict[str, Demand] = {}
    for name in sorted(by_service):
        rows = by_service[name]
        out[name] = Demand(
            service=name,
            executor=executors.get(name, "thread"),
            rate=sum(t.rate for t in rows) * traffic,
            cores=sum(t.rate * t.cpu_p90 for t in rows) * traffic,
            slots=sum(t.rate * t.wall_p90 for t in rows) * traffic,
            slot_memory=max(t.rss_peak_p90 for t in rows),
            largest=max(t.rss_peak_max for t in rows),
        )
    return out


# -- one pool on one shape ---------------------------------------------------------------------


def _tiers(amount: float, tiers: Sequence[tuple[float, float]], rest: float) -> float:
    """``amount`` charged tier by tier: ``(size, fraction)`` pairs, then ``rest``."""
    reserved, left = 0.0, amount
    for size, fraction in tiers:
        step = min(left, size)
        reserved += step * fraction
        left -= step
    return reserved + max(0.0, left) * rest


def allocatable(machine: Machine) -> tuple[float, int]:
    """(cores, bytes) a pod can have on a node of this shape: the shape less the system
    reserve GKE documents for node allocatable resources (kubelet, container runtime,
    OS: 6% of the first core, 1% of the next, 0.5% of the next two, 0.25% above four;
    25% of the first 4 GiB of memory, 20% of the next 4, 10% of the next 8, 6% of the
    next 112, 2% above 128 GiB, 255 MiB under 1 GiB, plus a 100 MiB eviction threshold).
    The planner sizes replicas on it so a planned pool also fits a Kubernetes pod."""
    cpu_reserve = _tiers(machine.cpu, ((1, 0.06), (1, 0.01), (2, 0.005)), 0.0025)
    gib = machine.memory / _GIB
    if gib < 1:
        mem_reserve = 255 * _MIB
    else:
        mem_reserve = _tiers(gib, ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06)), 0.02) * _GIB
    mem = machine.memory - mem_reserve - 100 * _MIB
    return max(0.0, machine.cpu - cpu_reserve), max(0, int(mem))


def size_pool(
    name: str, group: Sequence[Demand], machine: Machine, margin: float
) -> PoolPlan | None:
    """The fewest replicas of ``machine`` that carry ``group`` with ``margin``, or None
    when one slot (or the largest run seen) cannot fit a replica of this shape."""
    if machine.price_per_hour is None:
        return None
    grow = 1.0 + margin
    cores = sum(d.cores for d in group) * grow
    slots = sum(d.slots for d in group)
    slot_memory = max((d.slot_memory for d in group), default=0) * grow
    largest = max((d.largest for d in group), default=0)
    cpu, mem = allocatable(machine)
    if all(d.executor != "process" for d in group):
        cpu = min(cpu, THREAD_CORES)
    room = mem - BASE_MEMORY
    if cpu <= 0 or room <= 0 or room < slot_memory or room < largest:
        return None
    per_replica = math.inf if slot_memory <= 0 else math.floor(room / slot_memory)
    n = max(1, math.ceil(cores / cpu - _EPS), math.ceil(slots / per_replica - _EPS))
    concurrency = max(1, math.ceil(slots / n - _EPS))
    return PoolPlan(
        name=name,
        services=tuple(d.service for d in group),
        machine=machine,
        replicas=n,
        concurrency=concurrency,
        monthly_cost=n * machine.price_per_hour * HOURS_PER_MONTH,
        cores=cores,
        replica_memory=int(BASE_MEMORY + concurrency * slot_memory),
    )


def _cheapest(
    name: str, group: Sequence[Demand], shapes: Sequence[Machine], margin: float
) -> PoolPlan | None:
    best: PoolPlan | None = None
    for m in shapes:
        p = size_pool(name, group, m, margin)
        if p is None:
            continue
        key = (round(p.monthly_cost, 6), p.replicas * m.cpu, m.memory, m.name)
        if best is None or key < (
            round(best.monthly_cost, 6),
            best.replicas * best.machine.cpu,
            best.machine.memory,
            best.machine.name,
        ):
            best = p
    return best


# -- the search ------------------------------------------------------------------------------


def _partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every set partition of ``items`` (Bell(n) of them)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield [*part[:i], [first, *part[i]], *part[i + 1 :]]
        yield [[first], *part]


def _atoms(services: Sequence[str], queues: Mapping[str, set[str]]) -> list[tuple[str, ...]]:
    """Services that send to a common queue must share a pool (a queue belongs to one
    pool): the groups that stay together, each sorted, in name order."""
    parent = {s: s for s in services}

    def root(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    owner: dict[str, str] = {}
    for s in services:
        for q in sorted(queues.get(s, ())):
            if q in owner:
                parent[root(s)] = root(owner[q])
            else:
                owner[q] = s
    groups: dict[str, list[str]] = {}
    for s in services:
        groups.setdefault(root(s), []).append(s)
    return sorted(tuple(sorted(g)) for g in groups.values())


def _pool_name(services: Sequence[str], taken: set[str]) -> str:
    name = "-".join(services)
    if len(name) > 64 or name in taken:
        name = next(f"pool{i}" for i in range(1, 10_000) if f"pool{i}" not in taken)
    taken.add(name)
    return name


def plan(
    demand: Mapping[str, Demand],
    shapes: Sequence[Machine],
    *,
    margin: float = DEFAULT_MARGIN,
    traffic: float = 1.0,
    queues: Mapping[str, set[str]] | None = None,
    unmeasured: Sequence[str] = (),
) -> Plan:
    """The cheapest pools carrying ``demand`` on ``shapes``, and the monolith (every
    service in one pool on one shape) priced the same way.

    ``queues`` maps a service to the queues its tasks use: services sharing a queue stay
    in one pool. Up to :data:`EXHAUSTIVE_LIMIT` such groups every set partition is tried;
    past it, pools are merged greedily from one per group while that saves money.
    Raises PlanError when no shape can hold a service's tasks.
    """
    if not demand:
        raise PlanError("no service has measured runs: nothing to plan from")
    priced = [m for m in shapes if m.price_per_hour is not None and m.price_per_hour > 0]
    if not priced:
        raise PlanError("the catalog has no shape with a price_per_hour: nothing to compare")
    names = sorted(demand)
    atoms = _atoms(names, queues or {})
    memo: dict[tuple[str, ...], PoolPlan | None] = {}

    def block(services: tuple[str, ...]) -> PoolPlan | None:
        key = tuple(sorted(services))
        if key not in memo:
            memo[key] = _cheapest("-".join(key), [demand[s] for s in key], priced, margin)
        return memo[key]

    for a in atoms:
        if block(a) is None:
            worst = max(a, key=lambda s: max(demand[s].largest, demand[s].slot_memory))
            d = demand[worst]
            need = BASE_MEMORY + max(d.largest, d.slot_memory * (1 + margin))
            raise PlanError(
                f"service {worst!r}: one task needs {need / _GIB:.2f} GiB with the worker's "
                f"base memory and the {margin:.0%} margin, more than any priced shape of the "
                "catalog holds after the system reserve; add a larger shape (--catalog FILE)"
            )

    def cost(groups: Sequence[tuple[str, ...]]) -> float:
        total = 0.0
        for g in groups:
            p = block(g)
            if p is None:
                return math.inf
            total += p.monthly_cost
        return total

    def merge(groups: Sequence[Sequence[int]]) -> list[tuple[str, ...]]:
        return [tuple(sorted(s for i in g for s in atoms[i])) for g in groups]

    best: list[tuple[str, ...]]
    if len(atoms) <= EXHAUSTIVE_LIMIT:
        best, best_cost = merge([[i] for i in range(len(atoms))]), math.inf
        for part in _partitions(list(range(len(atoms)))):
            groups = merge(part)
            c = cost(groups)
            if c < best_cost - 1e-6 or (abs(c - best_cost) <= 1e-6 and len(groups) < len(best)):
                best, best_cost = groups, c
    else:
        best = list(atoms)
        while True:
            now = cost(best)
            options = [
                (
                    cost([g for k, g in enumerate(best) if k not in (i, j)] + [best[i] + best[j]]),
                    i,
                    j,
                )
                for i in range(len(best))
                for j in range(i + 1, len(best))
            ]
            if not options:
                break
            c, i, j = min(options)
            if c >= now - 1e-6:
                break
            best = [g for k, g in enumerate(best) if k not in (i, j)] + [
                tuple(sorted(best[i] + best[j]))
            ]
    taken: set[str] = set()
    pools = []
    for g in sorted(best):
        p = block(g)
        assert p is not None
        pools.append(_renamed(p, _pool_name(g, taken)))
    mono = block(tuple(names))
    if mono is None:
        raise PlanError(
            "no priced shape holds every service in one pool (the monolith): "
            "its replicas would need a slot as large as the largest task for every slot"
        )
    return Plan(
        pools=tuple(pools),
        monolith=_renamed(mono, "all"),
        demands=dict(demand),
        traffic=traffic,
        margin=margin,
        unmeasured=tuple(unmeasured),
    )


def _renamed(p: PoolPlan, name: str) -> PoolPlan:
    return PoolPlan(
        name, p.services, p.machine, p.replicas, p.concurrency, p.monthly_cost, p.cores,
        p.replica_memory,
    )  # fmt: skip


def price_pools(
    pools: Sequence[tuple[str, Sequence[str], Machine]],
    demand: Mapping[str, Demand],
    margin: float,
) -> tuple[PoolPlan, ...] | None:
    """An existing topology's pools (name, services, shape) sized for ``demand`` on their
    own shapes; None when one cannot carry its services or has no price."""
    out = []
    for name, services, machine in pools:
        group = [demand[s] for s in services if s in demand]
        p = size_pool(name, group, machine, margin)
        if p is None:
            return None
        out.append(p)
    return tuple(out)
