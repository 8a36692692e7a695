"""Services: named groups of task functions with a resource profile.

A service is the unit a topology places on a machine shape. Its profile says what one of
its tasks needs (``memory``, ``cpu``: read by the planner to choose shapes) and how its
tasks run (``executor``): ``"thread"`` is the worker as it always was (async handlers on the
event loop, plain functions on threads); ``"process"`` runs each task in a reused child
process whose resident memory is watched, so a task past its ``memory_limit`` is killed and
fails with :class:`~offload.errors.MemoryLimitExceeded` instead of taking its worker, and
every other task on that worker, down with it.

Every task function belongs to exactly one service; ``@app.task`` ones to ``"default"``.
Declaring a service or a task costs nothing: no I/O, no broker. Values are checked at
declaration, so a bad size fails in the module that declares it, naming the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .core.policy import check_timeout
from .errors import ConfigError
from .events import on_event
from .task import TaskFunction

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["EXECUTORS", "Service", "check_executors", "format_size", "parse_size"]

Executor = Literal["thread", "process"]
EXECUTORS: tuple[str, ...] = ("thread", "process")
# The executors this worker has (check_executors refuses to serve a queue whose tasks need
# another, rather than running them somewhere their limits would not hold).
AVAILABLE_EXECUTORS: frozenset[str] = frozenset({"thread", "process"})

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
MAX_SIZE = 1024**5  # one PiB: past any machine; a larger value is a typo
_SIZE_HINT = "give bytes as a whole number, or a size such as '512MiB', '2GiB' or '1.5GB'"


def parse_size(value: Any, field: str) -> int:
    """Bytes from ``512MiB``, ``2GiB``, ``1.5GB``, ``100 MB`` or a whole number of bytes.

    Binary units (KiB, MiB, GiB, TiB) count in 1024s, decimal ones (KB, MB, GB, TB) in
    1000s, case aside. Raises :class:`~offload.errors.ConfigError` naming ``field``.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{field}={value!r}: not a size; {_SIZE_HINT}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise ConfigError(f"{field}={value!r}: not a whole number of bytes; {_SIZE_HINT}")
        size = int(value)
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise ConfigError(f"{field}={value!r}: not a size; {_SIZE_HINT}")
        unit = m.group(2).lower()
        if unit not in _UNITS:
            raise ConfigError(
                f"{field}={value!r}: unknown unit {m.group(2)!r}; use B, KB, MB, GB, TB "
                "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
            )
        exact = float(m.group(1)) * _UNITS[unit]
        if unit in ("", "b") and not exact.is_integer():
            raise ConfigError(f"{field}={value!r}: not a whole number of bytes; {_SIZE_HINT}")
        size = round(exact)
    else:
        kind = type(value).__name__
        raise ConfigError(f"{field}={value!r}: a {kind} is not a size; {_SIZE_HINT}")
    if not 0 < size <= MAX_SIZE:
        raise ConfigError(f"{field}={value!r}: must be more than 0 bytes and at most 1 PiB")
    return size


def format_size(size: int | None) -> str:
    """``size`` bytes as people write them: ``512MiB``, ``1.5GiB``; ``-`` for None."""
    if size is None:
        return "-"
    for unit, step in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= step:
            return f"{size / step:.4g}{unit}"
    return f"{size}B"


def _cpu(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and 0 < value <= 1024)
    ):
        raise ConfigError(
            f"{where}={value!r}: give the vCPUs one task uses as a number more than 0 "
            "(0.25 for a quarter of one core) and at most 1024"
        )
    return float(value)


class Service:
    """A named group of task functions sharing a resource profile and an executor.

    Made by :meth:`offload.App.service`; ``@service.task`` registers task functions on it.
    ``memory`` and ``cpu`` describe one task's needs for planning (bytes, vCPUs) and are
    not enforced. ``memory_limit`` is enforced, by the process executor only: a task whose
    child process passes it is killed and fails with ``MemoryLimitExceeded`` under its
    queue's retry policy. Read-only once declared.
    """

    __slots__ = ("_cpu", "_executor", "_implicit", "_limit", "_memory", "name", "registry")

    def __init__(
        self,
        registry: Registry,
        name: str,
        *,
        memory: int | str | None = None,
        cpu: float | None = None,
        executor: str = "thread",
        memory_limit: int | str | None = None,
        implicit: bool = False,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"service name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
        self.registry = registry
        self.name = name
        where = f"app.service({name!r}"
        self._memory = None if memory is None else parse_size(memory, f"{where}): memory")
        self._cpu = _cpu(cpu, f"{where}): cpu")
        if executor not in EXECUTORS:
            raise ConfigError(
                f"{where}): executor={executor!r}: use 'thread' (async handlers on the "
                "event loop, plain functions on threads) or 'process' (one child process "
                "per running task, memory limits enforced)"
            )
        self._executor: str = executor
        self._limit = (
            None if memory_limit is None else parse_size(memory_limit, f"{where}): memory_limit")
        )
        if self._limit is not None and executor != "process":
            raise ConfigError(
                f"{where}): memory_limit is enforced only in child processes; declare the "
                "service with executor='process' or drop memory_limit"
            )
        self._implicit = implicit

    @property
    def memory(self) -> int | None:
        """Bytes one task of this service needs (declared, for planning); None: unknown."""
        return self._memory

    @property
    def cpu(self) -> float | None:
        """vCPUs one task of this service keeps busy (declared, for planning)."""
        return self._cpu

    @property
    def executor(self) -> str:
        """``"thread"`` or ``"process"``: how a worker runs this service's tasks."""
        return self._executor

    @property
    def memory_limit(self) -> int | None:
        """Bytes a task's child process may hold before it is killed (process executor);
        a task's own ``memory_limit`` wins. None: no limit."""
        return self._limit

    @property
    def declared(self) -> bool:
        """False only for ``"default"`` while no ``app.service("default", ...)`` declared
        it: a topology need not place it unless it has task functions."""
        return not self._implicit

    def profile(self) -> tuple[int | None, float | None, str, int | None]:
        """(memory, cpu, executor, memory_limit): what a redeclaration must agree with."""
        return (self._memory, self._cpu, self._executor, self._limit)

    def __repr__(self) -> str:
        parts = [f"executor={self._executor!r}"]
        if self._memory is not None:
            parts.append(f"memory={format_size(self._memory)}")
        if self._cpu is not None:
            parts.append(f"cpu={self._cpu:g}")
        if self._limit is not None:
            parts.append(f"memory_limit={format_size(self._limit)}")
        return f"<Service {self.name} {' '.join(parts)}>"

    @property
    def tasks(self) -> dict[str, TaskFunction]:
        """This service's task functions by name."""
        return {n: t for n, t in self.registry.tasks.items() if t.service is self}

    @property
    def queues(self) -> list[str]:
        """The queues this service's task functions are sent to, sorted (not counting
        ``on_oom`` escalation queues, which a bigger pool serves)."""
        return sorted({t.queue for t in self.registry.tasks.values() if t.service is self})

    def task(
        self,
        fn: Any = None,
        *,
        queue: str = "default",
        name: str | None = None,
        timeout: float | None = None,
        memory_limit: int | str | None = None,
        on_oom: str | None = None,
    ) -> Any:
        """Register a task function on this service: ``@service.task`` or
        ``@service.task(queue=..., name=..., timeout=..., memory_limit=..., on_oom=...)``.

        ``memory_limit`` overrides the service's for this function; ``on_oom`` names the
        queue (served by a bigger pool) that a run killed for memory is retried on, the
        attempt counted. Both need ``executor='process'``: a thread cannot be stopped
        safely, so a limit there could never be kept.
        """
        where = f"@{self.name}.task"
        limit = check_timeout(timeout, f"{where}: timeout")
        mem = None if memory_limit is None else parse_size(memory_limit, f"{where}: memory_limit")
        if (mem is not None or on_oom is not None) and self._executor != "process":
            which = "memory_limit" if mem is not None else "on_oom"
            raise ConfigError(
                f"{where}: {which} needs a memory-limited child process, and service "
                f"{self.name!r} has executor={self._executor!r}; declare it with "
                f"app.service({self.name!r}, executor='process', ...)"
            )
        if on_oom is not None and (not isinstance(on_oom, str) or not _QUEUE.match(on_oom)):
            raise ConfigError(
                f"{where}: on_oom={on_oom!r}: give the name of a queue a bigger pool serves"
            )
        if on_oom is not None and on_oom == queue:
            raise ConfigError(
                f"{where}: on_oom={on_oom!r} is the task's own queue, so a run killed for "
                "memory would land where it failed; name a queue a bigger pool serves"
            )
        return self._registrar(where, queue, name, limit, mem, on_oom)(fn)

    def on(self, event: str, *, queue: str = "default", name: str | None = None) -> Any:
        """Subscribe a task function of this service to ``event``, as ``@app.on`` does
        for the default service: ``@service.on("user.signed_up", queue="emails")``. It
        belongs to this service, so a topology runs it in this service's pool."""
        where = f"@{self.name}.on"
        return on_event(
            self.registry, event, lambda fn: self.task(fn, queue=queue, name=name), where
        )

    def _registrar(
        self,
        where: str,
        queue: str,
        name: str | None,
        timeout: float | None,
        memory_limit: int | None = None,
        on_oom: str | None = None,
    ) -> Any:
        """What ``@app.task`` and ``@service.task`` share: name the function, refuse a
        name taken by another function, and register it (``fn`` None: a decorator)."""

        def register(f: Callable[..., Any]) -> TaskFunction:
            if not callable(f):
                raise ConfigError(f"{where} needs a function, got {f!r}")
            tname = name or f"{f.__module__}.{f.__qualname__}"
            if "<locals>" in tname and name is None:
                raise ConfigError(
                    f"task {tname!r} is defined inside a function, so workers cannot find "
                    "it by that name; define it at module level or pass name="
                )
            tasks = self.registry.tasks
            existing = tasks.get(tname)
            if existing is not None and existing.fn is not f:
                raise ConfigError(f"task name {tname!r} is registered twice; pass name=")
            tf = TaskFunction(
                self.registry,
                f,
                tname,
                queue,
                timeout=timeout,
                service=self,
                memory_limit=memory_limit,
                on_oom=on_oom,
            )
            tasks[tname] = tf
            return tf

        def either(fn: Any) -> Any:
            return register(fn) if fn is not None else register

        return either


def declare_service(
    registry: Registry,
    name: str,
    *,
    memory: int | str | None = None,
    cpu: float | None = None,
    executor: str = "thread",
    memory_limit: int | str | None = None,
) -> Service:
    """The one place services are declared (``App.service`` calls it). A name declares
    once: the same profile again returns the same Service, a different one is refused,
    except that the implicit ``"default"`` takes its profile from its first declaration."""
    made = Service(
        registry, name, memory=memory, cpu=cpu, executor=executor, memory_limit=memory_limit
    )
    with registry.lock:
        existing = registry.services.get(name)
        if existing is None:
            registry.services[name] = made
            return made
        if existing._implicit:
            # tasks already hold this object: give it the declared profile in place
            existing._memory, existing._cpu = made._memory, made._cpu
            existing._executor, existing._limit = made._executor, made._limit
            existing._implicit = False
            return existing
        if existing.profile() != made.profile():
            raise ConfigError(
                f"service {name!r} is declared twice with different profiles ({existing!r}, "
                f"then {made!r}); declare each service once and reuse the object"
            )
        return existing


def check_executors(registry: Registry, queues: Sequence[str]) -> None:
    """Refuse to serve ``queues`` when a task function sent to one of them cannot run where
    its service says: an executor this worker does not have, or a process-executor task
    its child process could not import (defined inside a function, or in ``__main__``).
    Running it on a thread instead would drop its memory limit without a word. Raises
    ConfigError naming the service and the task."""
    served = set(queues)
    for tf in sorted(registry.tasks.values(), key=lambda t: t.name):
        service = tf.service
        if service is None or not (tf.queue in served or tf.on_oom in served):
            continue
        if service.executor not in AVAILABLE_EXECUTORS:
            raise ConfigError(
                f"service {service.name!r}: executor={service.executor!r} is not available "
                f"in this version of the worker, and its task {tf.name} must not run on "
                f"threads without its memory limit; serve queue {tf.queue!r} with no worker "
                "for now, or declare the service with executor='thread'"
            )
        if service.executor == "process":
            module = getattr(tf.fn, "__module__", None) or "?"
            qualname = getattr(tf.fn, "__qualname__", None) or "?"
            if module == "__main__" or "<locals>" in qualname or "<lambda>" in qualname:
                raise ConfigError(
                    f"service {service.name!r} runs its tasks in child processes, which "
                    f"import each task function by module and name, and {tf.name} "
                    f"({module}.{qualname}) cannot be imported that way; define it at the "
                    "top level of an importable module (not __main__, not inside a function)"
                )
