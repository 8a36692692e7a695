"""The App: the whole system's queues and task functions, and the one place that reads the
environment. Declaring things costs nothing; the broker is reached on first real use."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import msgspec

from .brokers.base import (
    Broker,
    EnforcedPolicy,
    QueueStats,
    TaskMetrics,
    check_dead_letters_limit,
)
from .core import envelope as _env
from .core.policy import QueuePolicy, RetryPolicy, check_timeout
from .errors import BadArguments, BrokerURLError, ConfigError, UnknownTask
from .events import Publishing
from .periodic import Scheduling
from .registry import Registry
from .service import Service, declare_service
from .task import TaskFunction, TaskHandle

if TYPE_CHECKING:
    from .profile import Profile
    from .topology import Placement

__all__ = ["DEFAULT_BROKER", "PUSH_TASK", "App", "DeadLetterInfo"]

DEFAULT_BROKER = "sqlite:///offload.db"
#: the built-in task function that delivers HTTP-target tasks (:meth:`App.push`)
PUSH_TASK = "offload.push"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """A dead-lettered task, with the call decoded when its payload still decodes."""

    id: str
    queue: str
    name: str | None
    task: str
    attempts: int
    error: str
    traceback: str
    failed_at: float
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None


class App(Publishing, Scheduling):
    """One per codebase: the queues, the task functions and the broker.

    ``broker`` is a URL, or a :class:`~offload.brokers.base.Broker` instance (a
    third-party broker that passes :func:`offload.testing.check_broker`); it defaults to
    ``$OFFLOAD_BROKER``, else ``sqlite:///offload.db``. ``topology`` is the path of a
    topology file placing the services in pools (see docs/services.md); it defaults to
    ``$OFFLOAD_TOPOLOGY``, else none: one pool ``all`` with every service. It is read when
    first needed (:meth:`placement`), not here. The synchronous methods (``send``,
    ``stats``...) are safe from any thread.
    """

    def __init__(
        self,
        name: str,
        broker: str | Broker | None = None,
        *,
        topology: str | os.PathLike[str] | None = None,
        call_timeout: float = 30.0,
    ) -> None:
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name):
            raise ConfigError(f"app name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
        self.name = name
        if broker is None:
            broker = os.environ.get("OFFLOAD_BROKER") or DEFAULT_BROKER
        elif isinstance(broker, str) and not broker.strip():
            raise BrokerURLError(
                f"app {name!r}: broker={broker!r} is empty; give a URL such as "
                f"{DEFAULT_BROKER} (or leave broker out to use $OFFLOAD_BROKER, else "
                "that default)"
            )
        #: the seam task functions and workers use (package-internal)
        self.registry = Registry(name, broker)
        if (
            isinstance(call_timeout, bool)
            or not isinstance(call_timeout, (int, float))
            or not 0 < call_timeout <= 86_400
        ):
            raise ConfigError(
                f"app {name!r}: call_timeout={call_timeout!r} must be seconds, more than 0 and "
                "at most 86,400 (a day)"
            )
        #: seconds a call waits for its result when nothing else sets a deadline
        self.registry.call_timeout = float(call_timeout)
        self.registry.services["default"] = Service(self.registry, "default", implicit=True)
        if topology is None:
            topology = os.environ.get("OFFLOAD_TOPOLOGY") or None
        #: the topology file's path (None: the monolith); loaded by :meth:`placement`
        self.topology: str | None = os.fspath(topology) if topology is not None else None
        # every App can deliver HTTP-target tasks (push, Cloud Tasks): its workers run them
        self.task(name=PUSH_TASK)(_push)

    @property
    def broker_url(self) -> str:
        return self.registry.broker_url

    def __repr__(self) -> str:
        return f"<App {self.name} broker={self.broker_url!r}>"

    # -- declaring ----------------------------------------------------------------------

    def queue(
        self,
        name: str,
        *,
        rate: str | float | None = None,
        bucket_size: int | None = None,
        max_concurrent: int | None = None,
        lease: float = 60.0,
        retry: Any = None,
        dedup_window: float = 3600.0,
        timeout: float | None = None,
    ) -> QueuePolicy:
        """Declare (or redeclare) a queue and its policy; enforced by the broker globally.
        ``timeout``: seconds a handler of this queue may run before it fails with
        :class:`~offload.errors.TaskTimeout` (None: no limit; a task's own wins)."""
        policy = QueuePolicy(
            name,
            rate=rate,
            bucket_size=bucket_size,
            max_concurrent=max_concurrent,
            lease=lease,
            retry=RetryPolicy.from_retry(retry),
            dedup_window=dedup_window,
            timeout=timeout,
        )
        self.registry.declare(policy)
        return policy

    @overload
    def task(self, fn: F) -> TaskFunction: ...
    @overload
    def task(
        self, *, queue: str = "default", name: str | None = None, timeout: float | None = None
    ) -> Callable[[F], TaskFunction]: ...

    def task(
        self,
        fn: Any = None,
        *,
        queue: str = "default",
        name: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register a task function of the ``"default"`` service: ``@app.task`` or
        ``@app.task(queue=..., name=..., timeout=...)``; ``timeout`` overrides the queue's
        for this function."""
        limit = check_timeout(timeout, "@app.task: timeout")
        default = self.registry.services["default"]
        return default._registrar("@app.task", queue, name, limit)(fn)

    def service(
        self,
        name: str,
        *,
        memory: int | str | None = None,
        cpu: float | None = None,
        executor: str = "thread",
        memory_limit: int | str | None = None,
    ) -> Service:
        """Declare a service: a group of task functions (``@service.task``) that a topology
        places in one pool. ``memory`` (bytes or ``"2GiB"``) and ``cpu`` (vCPUs) are what
        one task needs, for planning; ``executor`` is ``"thread"`` or ``"process"``;
        ``memory_limit`` is enforced per task by the process executor. Declaring the same
        name again returns the same Service; a different profile raises ConfigError."""
        return declare_service(
            self.registry,
            name,
            memory=memory,
            cpu=cpu,
            executor=executor,
            memory_limit=memory_limit,
        )

    @property
    def services(self) -> dict[str, Service]:
        """Every service by name, ``"default"`` (home of ``@app.task``) included."""
        return dict(self.registry.services)

    def placement(self, topology: str | os.PathLike[str] | None = None) -> Placement:
        """Which pool runs which services and queues: from ``topology`` (a path), else the
        App's topology file, else one pool ``all`` with everything. The file is read and
        checked against the services now; every fault raises
        :class:`~offload.topology.TopologyError` citing the file, line and field."""
        from .topology import place

        path = os.fspath(topology) if topology is not None else self.topology
        return place(self.registry, path)

    @property
    def call_timeout(self) -> float:
        """Seconds a call waits when neither a timeout, a context nor the current task
        gives it a deadline."""
        return self.registry.call_timeout

    @property
    def queues(self) -> dict[str, QueuePolicy]:
        return dict(self.registry.queues)

    @property
    def tasks(self) -> dict[str, TaskFunction]:
        return dict(self.registry.tasks)

    def policy(self, queue: str) -> QueuePolicy:
        """The policy this App declares for ``queue``; raises :class:`UnknownQueue`."""
        return self.registry.policy(queue)

    def get_task(self, name: str) -> TaskFunction:
        try:
            return self.registry.tasks[name]
        except KeyError:
            raise UnknownTask(
                f"task {name!r} is not registered in app {self.name!r} (tasks: "
                f"{', '.join(sorted(self.registry.tasks)) or 'none'})"
            ) from None

    # -- the synchronous facade ---------------------------------------------------------

    def open(self) -> App:
        """Connect and declare the queues now rather than on first use."""
        self._call(lambda b: _noop())
        return self

    def close(self) -> None:
        """Release the facade's connections and its portal thread, if any."""
        self.registry.close()

    def __enter__(self) -> App:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, op: Callable[[Broker], Any]) -> Any:
        return self.registry.call(op)

    # -- operations -----------------------------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        """Counts for one queue: ready, scheduled, leased, dead, paused."""
        self.policy(queue)
        return self._call(lambda b: b.stats(queue))

    def inspect(self, queue: str) -> QueueStats:
        """Like :meth:`stats`, but without declaring this App's queues first: the counts
        and the policy the broker enforces now (``.policy``), which a worker of another
        deploy or another App may have declared differently (see :meth:`policy_drift`)."""
        self.policy(queue)
        return self.registry.call(lambda b: b.stats(queue), declare=False)

    def policy_drift(self, queue: str, enforced: EnforcedPolicy | None) -> dict[str, tuple]:
        """Fields where this App's declaration of ``queue`` differs from what the broker
        enforces: ``{field: (declared, enforced)}``; empty when they agree or the queue was
        never declared in the broker."""
        if enforced is None:
            return {}
        p = self.policy(queue)
        mine = {
            "rate": p.rate,
            "bucket": p.bucket,
            "max_concurrent": p.max_concurrent,
            "lease": p.lease,
            "dedup_window": p.dedup_window,
        }
        out = {}
        for field, value in mine.items():
            theirs = getattr(enforced, field)
            if (value is None) != (theirs is None) or (
                value is not None and abs(value - theirs) > 1e-9 * max(1.0, abs(value))
            ):
                out[field] = (value, theirs)
        return out

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetterInfo]:
        """Dead-lettered tasks, oldest first, with the last error and traceback; at most
        ``limit`` (0 to 10,000)."""
        self.policy(queue)
        check_dead_letters_limit(limit)
        out = []
        for d in self._call(lambda b: b.dead_letters(queue, limit)):
            task, args, kwargs = "<undecodable payload>", None, None
            try:
                env = _env.decode(d.payload)
                task, args, kwargs = env.task, env.args, env.kwargs
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass
            out.append(
                DeadLetterInfo(
                    d.id,
                    d.queue,
                    d.name,
                    task,
                    d.attempts,
                    d.error,
                    d.traceback,
                    d.failed_at,
                    args,
                    kwargs,
                )
            )
        return out

    def requeue_dead(self, queue: str, id: str | None = None) -> int:
        """Make one dead task (or all, without ``id``) ready again with fresh attempts."""
        self.policy(queue)
        return self._call(lambda b: b.requeue_dead(queue, None if id is None else [id]))

    def pause(self, queue: str) -> None:
        """Stop every worker from claiming this queue's tasks; running ones finish."""
        self.policy(queue)
        self._call(lambda b: b.set_paused(queue, True))

    def resume(self, queue: str) -> None:
        self.policy(queue)
        self._call(lambda b: b.set_paused(queue, False))

    def purge(self, queue: str) -> int:
        """Delete every ready and scheduled task of the queue; returns how many."""
        self.policy(queue)
        return self._call(lambda b: b.purge(queue))

    def delete_task(self, queue: str, id: str | None = None, name: str | None = None) -> bool:
        """Delete one task by id or name, in any state. False when there was none."""
        self.policy(queue)
        if (id is None) == (name is None):
            raise BadArguments("delete_task: give exactly one of id= or name=")
        return self._call(lambda b: b.delete(queue, id=id, name=name))

    def push(
        self,
        queue: str,
        url: str,
        *,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        method: str = "POST",
        name: str | None = None,
        delay: float | None = None,
        deadline: float = 600.0,
    ) -> TaskHandle:
        """Enqueue an HTTP request for the workers serving ``queue`` to deliver, signed, under
        the queue's rate, concurrency and retry policy (see :mod:`offload.push`). The
        request is checked here (an http(s) URL without credentials, a known method, header
        names and values without line breaks, a body of at most 1 MiB, a ``deadline`` from
        0.1 to 1800 seconds); the SSRF guard runs where it is delivered. ``name`` and
        ``delay`` are :meth:`TaskFunction.send_with`'s."""
        from . import push

        request = push.make_request(url, body, headers, method, deadline, delay)
        return self.get_task(PUSH_TASK).send_with(
            args=(request,), queue=queue, name=name, delay=delay
        )

    def metrics(self) -> list[TaskMetrics]:
        """Per task function: counts, failures, wall and CPU time measured by workers."""
        return self._call(lambda b: b.metrics())

    def profile(self) -> Profile:
        """Per task function and per service: runs, failures, runs per second over the last
        hour, and p50/p90 of wall time, CPU time and peak RSS as the workers measured them
        (:mod:`offload.profile`); ``.to_dict()`` is what ``offload profile --json`` prints.
        Reads the broker as it is (declares nothing); a task that never ran has zeros."""
        from .profile import profile

        async def read(b: Broker) -> tuple[list[TaskMetrics], float]:
            return await b.metrics(), await b.now()

        return profile(self, *self.registry.call(read, declare=False))


async def _noop() -> None:
    return None


async def _push(request: dict[str, Any]) -> None:
    """Deliver one HTTP-target task (:meth:`App.push`) with :mod:`offload.push`, imported
    on first use so that declaring an App imports no HTTP client."""
    from . import push

    await push.deliver(request)
