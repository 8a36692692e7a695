"""The topology file: which services run together, in which pool, on which machine shape.

A TOML file (see docs/services.md)::

    [machines.my-box]            # optional custom shapes; catalog names work too
    cpu = 2
    memory = "16GiB"
    price_per_hour = 0.12

    [pools.web]
    services = ["default", "emails"]
    machine = "e2-standard-2"
    replicas = [1, 4]            # min, max
    concurrency = 16
    target_latency = 2           # --autoscale: seconds a ready task may wait (default 2)
    cooldown = 60                # --autoscale: seconds of spare capacity before scaling down

The same code runs as a monolith (no topology: one pool ``all`` with every service) or
split across pools; the file changes, the code does not. Loading checks the file alone
(:func:`load_topology`); :func:`place` then checks it against the App's services and
queues. Every fault is one :class:`TopologyError` line, ``FILE:LINE: FIELD: what was
wrong; what to do``. tomllib reports no positions for values, so :class:`_Lines` finds
them by scanning the text for the table and the key.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .autoscale import DEFAULT_COOLDOWN, DEFAULT_TARGET_LATENCY
from .catalog import Machine, load_catalog
from .errors import ConfigError
from .service import parse_size

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["MONOLITH", "Placement", "Pool", "Topology", "TopologyError", "load_topology", "place"]

MONOLITH = "all"  # the one pool of an App without a topology
MAX_REPLICAS = 10_000
MAX_CONCURRENCY = 100_000
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_POOL_KEYS = (
    "services",
    "machine",
    "replicas",
    "concurrency",
    "queues",
    "target_latency",
    "cooldown",
)
_MACHINE_KEYS = ("cpu", "memory", "price_per_hour")


class TopologyError(ConfigError):
    """A topology file that cannot be read, or that does not fit the App: the message
    names the file, the line and the field."""


@dataclass(frozen=True, slots=True)
class Pool:
    """A set of services run together by worker processes on one machine shape.

    ``replicas`` is (min, max) worker processes (``offload run`` starts the minimum, at
    least one; the autoscaler uses the range); ``concurrency`` is tasks in flight per
    worker (None: the worker's default); ``queues`` are extra queues the pool serves
    beyond its services' own, such as an ``on_oom`` escalation queue. ``target_latency``
    and ``cooldown`` (seconds) steer ``offload run --autoscale`` (see
    :mod:`offload.autoscale`).
    """

    name: str
    services: tuple[str, ...]
    machine: Machine | None = None
    replicas: tuple[int, int] = (1, 1)
    concurrency: int | None = None
    queues: tuple[str, ...] = ()
    target_latency: float = DEFAULT_TARGET_LATENCY
    cooldown: float = DEFAULT_COOLDOWN


@dataclass(frozen=True, slots=True)
class Topology:
    """A loaded, self-consistent topology file (not yet checked against an App)."""

    path: str
    pools: Mapping[str, Pool]
    machines: Mapping[str, Machine]  # the custom shapes the file declares
    lines: _Lines


@dataclass(frozen=True, slots=True)
class Placement:
    """A topology checked against an App: per pool, its services and the queues its
    workers serve. ``path`` is None for the monolith."""

    path: str | None
    pools: Mapping[str, Pool]
    queues: Mapping[str, tuple[str, ...]]  # pool -> queues its workers serve, sorted

    def pool(self, name: str) -> Pool:
        """The pool called ``name``; TopologyError lists the pools there are."""
        try:
            return self.pools[name]
        except KeyError:
            where = f"{self.path}: " if self.path else "no topology (one pool 'all'): "
            raise TopologyError(
                f"{where}pool {name!r} is not declared; pools: {', '.join(self.pools)}"
            ) from None

    def pool_of(self, service: str) -> str:
        """The pool that runs ``service``."""
        for p in self.pools.values():
            if service in p.services:
                return p.name
        raise TopologyError(f"service {service!r} is in no pool of {self.path or 'the app'}")


# -- finding lines --------------------------------------------------------------------------

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=\s*(.*)$")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_DOTTED})\s*=")


def _split_key(dotted: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in re.findall(_KEY_PART, dotted))


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


class _Lines:
    """Where each table and key of a TOML text is: ``line(("pools", "web", "machine"))``.

    A best-effort scanner (tables, dotted keys, one level of inline tables, multi-line
    arrays): enough to point at the line a person must edit. A path it cannot find falls
    back to its longest found prefix, then to line 1.
    """

    def __init__(self, text: str) -> None:
        self._at: dict[tuple[str, ...], int] = {}
        self._span: dict[tuple[str, ...], tuple[int, int]] = {}
        self._text = text.splitlines()
        table: tuple[str, ...] = ()
        open_value: tuple[tuple[str, ...], int, int] | None = None  # path, start, depth
        for n, raw in enumerate(self._text, start=1):
            line = _strip_comment(raw)
            if open_value is not None:
                path, start, depth = open_value
                depth += line.count("[") - line.count("]")
                if depth <= 0:
                    self._span[path] = (start, n)
                    open_value = None
                else:
                    open_value = (path, start, depth)
                continue
            m = _HEADER.match(line)
            if m:
                table = _split_key(m.group(1))
                for i in range(1, len(table) + 1):
                    self._at.setdefault(table[:i], n)
                continue
            m = _ASSIGN.match(line)
            if not m:
                continue
            path = table + _split_key(m.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                self._at.setdefault(path[:i], n)
            value = m.group(2)
            for inner in _INLINE_KEY.finditer(value):
                self._at.setdefault(path + _split_key(inner.group(1)), n)
            depth = value.count("[") - value.count("]")
            if value.lstrip().startswith("[") and depth > 0:
                open_value = (path, n, depth)
            else:
                self._span[path] = (n, n)

    def line(self, path: tuple[str, ...], item: str | None = None) -> int:
        """The line of ``path`` (of ``item`` inside its array value, when given)."""
        for i in range(len(path), 0, -1):
            n = self._at.get(path[:i])
            if n is None:
                continue
            span = self._span.get(path)
            if item is not None and i == len(path) and span is not None:
                for k in range(span[0], span[1] + 1):
                    text = _strip_comment(self._text[k - 1])
                    if f'"{item}"' in text or f"'{item}'" in text:
                        return k
            return n
        return 1


# -- loading ---------------------------------------------------------------------------------


class _Reader:
    """Checks one file's values, raising TopologyError at the line of the faulty field."""

    def __init__(self, path: str, lines: _Lines) -> None:
        self.path, self.lines = path, lines

    def fail(self, field: tuple[str, ...], message: str, item: str | None = None) -> TopologyError:
        dotted = ".".join(field)
        return TopologyError(f"{self.path}:{self.lines.line(field, item)}: {dotted}: {message}")

    def table(self, value: Any, field: tuple[str, ...], example: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a table, e.g. {example}")
        return value

    def keys(self, table: dict[str, Any], field: tuple[str, ...], allowed: tuple[str, ...]):
        for key in table:
            if key not in allowed:
                raise self.fail(
                    (*field, key), f"unknown field; a {field[0][:-1]} has {', '.join(allowed)}"
                )

    def number(
        self, value: Any, field: tuple[str, ...], *, zero: bool = False, integer: bool = False
    ) -> float:
        bad = isinstance(value, bool) or not isinstance(value, int if integer else (int, float))
        if bad or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
            kind = "a whole number" if integer else "a number"
            bound = ">= 0" if zero else "> 0"
            raise self.fail(field, f"{value!r} must be {kind} {bound}")
        return value

    def machine(self, name: str, value: Any) -> Machine:
        field = ("machines", name)
        m = self.table(value, field, 'cpu = 2, memory = "16GiB", price_per_hour = 0.12')
        self.keys(m, field, _MACHINE_KEYS)
        for required in ("cpu", "memory"):
            if required not in m:
                raise self.fail(field, f"{required} is missing; a machine needs cpu and memory")
        try:
            memory = parse_size(m["memory"], "memory")
        except ConfigError as exc:
            raise self.fail((*field, "memory"), str(exc).removeprefix("memory=")) from None
        price = m.get("price_per_hour")
        return Machine(
            name=name,
            cpu=float(self.number(m["cpu"], (*field, "cpu"))),
            memory=memory,
            price_per_hour=None
            if price is None
            else float(self.number(price, (*field, "price_per_hour"), zero=True)),
        )

    def names(self, value: Any, field: tuple[str, ...], what: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(field, f'{value!r} must be a list of {what} names, e.g. ["a", "b"]')
        seen: set[str] = set()
        for v in value:
            if v in seen:
                raise self.fail(field, f"{v!r} is listed twice", item=v)
            seen.add(v)
        return tuple(value)

    def replicas(self, value: Any, field: tuple[str, ...]) -> tuple[int, int]:
        pair = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            or not 0 <= pair[0] <= pair[1] <= MAX_REPLICAS
            or pair[1] < 1
        ):
            raise self.fail(
                field,
                f"{value!r} must be [min, max] worker processes with 0 <= min <= max, "
                f"1 <= max <= {MAX_REPLICAS:,} (or one number for both), e.g. [1, 4]",
            )
        return (pair[0], pair[1])

    def pool(self, name: str, value: Any, machines: Mapping[str, Machine]) -> Pool:
        field = ("pools", name)
        if not _NAME.match(name):
            raise self.fail(field, "a pool name is 1-64 letters, digits, '_', '-' or '.'")
        p = self.table(value, field, 'services = ["default"], machine = "e2-standard-2"')
        self.keys(p, field, _POOL_KEYS)
        for required in ("services", "machine"):
            if required not in p:
                raise self.fail(
                    field, f"{required} is missing; a pool needs services and a machine"
                )
        services = self.names(p["services"], (*field, "services"), "service")
        queues = self.names(p.get("queues", []), (*field, "queues"), "queue")
        if not services and not queues:
            raise self.fail(
                (*field, "services"),
                "is empty; list the services this pool runs (or, for a pool that only takes "
                "on_oom escalations, give queues = [...])",
            )
        shape = p["machine"]
        if not isinstance(shape, str) or shape not in machines:
            raise self.fail(
                (*field, "machine"),
                f"unknown machine {shape!r}; name a built-in shape (offload machines lists "
                "them) or declare it under [machines.NAME] with cpu, memory, price_per_hour",
            )
        concurrency = p.get("concurrency")
        if concurrency is not None:
            concurrency = int(self.number(concurrency, (*field, "concurrency"), integer=True))
            if concurrency > MAX_CONCURRENCY:
                raise self.fail((*field, "concurrency"), f"must be at most {MAX_CONCURRENCY:,}")
        return Pool(
            name=name,
            services=services,
            machine=machines[shape],
            replicas=self.replicas(p.get("replicas", [1, 1]), (*field, "replicas")),
            concurrency=concurrency,
            queues=queues,
            target_latency=float(
                self.number(
                    p.get("target_latency", DEFAULT_TARGET_LATENCY), (*field, "target_latency")
                )
            ),
            cooldown=float(
                self.number(p.get("cooldown", DEFAULT_COOLDOWN), (*field, "cooldown"), zero=True)
            ),
        )


def load_topology(path: str) -> Topology:
    """Read and check a topology file on its own (its services are checked against an
    App by :func:`place`). Raises :class:`TopologyError`, one line citing file and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise TopologyError(
            f"{path}: cannot read the topology file ({exc.strerror or exc}); check the path "
            "given by --topology, App(topology=...) or $OFFLOAD_TOPOLOGY"
        ) from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{path}:1: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = m.group(1) if m else "1"
        what = re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(exc))
        col = f" at column {m.group(2)}" if m else ""
        raise TopologyError(f"{path}:{line}: invalid TOML: {what}{col}") from None
    reader = _Reader(path, lines := _Lines(text))
    for key in data:
        if key not in ("machines", "pools"):
            raise reader.fail(
                (key,), "unknown table; a topology has [pools.NAME] and [machines.NAME] tables"
            )
    custom = {
        name: reader.machine(name, value)
        for name, value in reader.table(
            data.get("machines", {}), ("machines",), "[machines.NAME]"
        ).items()
    }
    machines = {**load_catalog(), **custom}
    pools_table = reader.table(data.get("pools", {}), ("pools",), "[pools.NAME]")
    if not pools_table:
        raise TopologyError(
            f"{path}:1: pools: no pool is declared; add a [pools.NAME] table with "
            'services = [...] and machine = "..."'
        )
    pools = {name: reader.pool(name, value, machines) for name, value in pools_table.items()}
    for kind in ("services", "queues"):
        owner: dict[str, str] = {}
        for p in pools.values():
            for name in getattr(p, kind):
                if name in owner:
                    raise reader.fail(
                        ("pools", p.name, kind),
                        f"{kind[:-1]} {name!r} is already in pool {owner[name]!r}; a "
                        f"{kind[:-1]} runs in one pool (give the pools' machines the larger "
                        "shape, or split the work into two services)",
                        item=name,
                    )
                owner[name] = p.name
    return Topology(path, pools, custom, lines)


# -- placing an App --------------------------------------------------------------------------


def place(registry: Registry, path: str | None) -> Placement:
    """The App's services placed in pools: by the topology file at ``path``, or (None) in
    the one pool ``all`` that serves every queue, as a worker without options does."""
    if path is None:
        pool = Pool(MONOLITH, tuple(registry.services))
        return Placement(None, {MONOLITH: pool}, {MONOLITH: tuple(sorted(registry.queues))})
    topo = load_topology(path)
    reader = _Reader(path, topo.lines)
    services = registry.services
    for p in topo.pools.values():
        for name in p.services:
            if name not in services:
                raise reader.fail(
                    ("pools", p.name, "services"),
                    f"unknown service {name!r}; the app's services are "
                    f"{', '.join(sorted(services))} (declare it with app.service({name!r}))",
                    item=name,
                )
        for q in p.queues:
            if q not in registry.queues:
                raise reader.fail(
                    ("pools", p.name, "queues"),
                    f"queue {q!r} is not declared by the app; declare it with app.queue({q!r})",
                    item=q,
                )
    pool_of = {s: p.name for p in topo.pools.values() for s in p.services}
    first = ("pools",)
    for name, svc in services.items():
        if name not in pool_of and (svc.tasks or svc.declared):
            home = " (the home of @app.task functions)" if name == "default" else ""
            raise reader.fail(
                first,
                f"service {name!r}{home} is in no pool; add it to one pool's services "
                f"(pools: {', '.join(topo.pools)})",
            )
    # A queue belongs to one pool: a worker claims whatever its queues hold, so a queue
    # shared by services of two pools would make one pool's workers run the other's tasks.
    # In file order, so the pool named later is the one cited.
    queue_pool: dict[str, str] = {q: p.name for p in topo.pools.values() for q in p.queues}
    for p in topo.pools.values():
        for svc_name in p.services:
            for tf in sorted(services[svc_name].tasks.values(), key=lambda t: t.name):
                other = queue_pool.setdefault(tf.queue, p.name)
                if other != p.name:
                    raise reader.fail(
                        ("pools", p.name, "services"),
                        f"service {svc_name!r} sends task {tf.name!r} to queue {tf.queue!r}, "
                        f"which pool {other!r} serves; workers of {other!r} would run it. "
                        "Give the task a queue of its own service's pool",
                        item=svc_name,
                    )
    for tf in registry.tasks.values():
        if tf.on_oom is not None and tf.on_oom not in queue_pool:
            svc_name = tf.service.name if tf.service is not None else "default"
            raise reader.fail(
                ("pools", pool_of[svc_name], "services"),
                f"task {tf.name!r} escalates to queue {tf.on_oom!r} (on_oom) that no pool "
                f"serves; add queues = [{tf.on_oom!r}] to the larger pool that should run it",
                item=svc_name,
            )
    queues = {
        name: tuple(sorted(q for q, owner in queue_pool.items() if owner == name))
        for name in topo.pools
    }
    return Placement(path, topo.pools, queues)
