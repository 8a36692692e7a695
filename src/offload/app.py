"""The App: the whole system's queues and task functions, and the one place that reads the
environment. Declaring things costs nothing; the broker is reached on first real use."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import msgspec

from ._sync import Portal, run_inline
from .brokers import broker_from_url
from .brokers.base import Broker, NewTask, QueueStats, TaskMetrics
from .core import envelope as _env
from .core.policy import QueuePolicy, RetryPolicy
from .errors import BadArguments, ConfigError, UnknownQueue, UnknownTask, Unsupported
from .task import TaskFunction

__all__ = ["DEFAULT_BROKER", "App", "DeadLetterInfo"]

DEFAULT_BROKER = "sqlite:///offload.db"
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


class App:
    """One per codebase: the queues, the task functions and the broker URL.

    ``broker`` defaults to ``$OFFLOAD_BROKER``, else ``sqlite:///offload.db``. The
    synchronous methods (``send``, ``stats``...) are safe from any thread.
    """

    def __init__(self, name: str, broker: str | None = None) -> None:
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", name):
            raise ConfigError(f"app name {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
        self.name = name
        self.broker_url = broker or os.environ.get("OFFLOAD_BROKER") or DEFAULT_BROKER
        broker_from_url(self.broker_url)  # validate the URL now; nothing connects yet
        self._queues: dict[str, QueuePolicy] = {"default": QueuePolicy("default")}
        self._tasks: dict[str, TaskFunction] = {}
        self._lock = threading.Lock()
        self._facade: Broker | None = None
        self._portal: Portal | None = None
        self._declared = False
        # brokers opened by workers on their own loops, so async sends reuse them
        self._loop_brokers: dict[asyncio.AbstractEventLoop, Broker] = {}

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
    ) -> QueuePolicy:
        """Declare (or redeclare) a queue and its policy; enforced by the broker globally."""
        policy = QueuePolicy(
            name,
            rate=rate,
            bucket_size=bucket_size,
            max_concurrent=max_concurrent,
            lease=lease,
            retry=RetryPolicy.from_retry(retry),
            dedup_window=dedup_window,
        )
        with self._lock:
            self._queues[name] = policy
            self._declared = False
        return policy

    @overload
    def task(self, fn: F) -> TaskFunction: ...
    @overload
    def task(
        self, *, queue: str = "default", name: str | None = None
    ) -> Callable[[F], TaskFunction]: ...

    def task(self, fn: Any = None, *, queue: str = "default", name: str | None = None) -> Any:
        """Register a task function: ``@app.task`` or ``@app.task(queue=..., name=...)``."""

        def register(f: Callable[..., Any]) -> TaskFunction:
            if not callable(f):
                raise ConfigError(f"@app.task needs a function, got {f!r}")
            tname = name or f"{f.__module__}.{f.__qualname__}"
            if "<locals>" in tname and name is None:
                raise ConfigError(
                    f"task {tname!r} is defined inside a function, so workers cannot find "
                    "it by that name; define it at module level or pass name="
                )
            existing = self._tasks.get(tname)
            if existing is not None and existing.fn is not f:
                raise ConfigError(f"task name {tname!r} is registered twice; pass name=")
            tf = TaskFunction(self, f, tname, queue)
            self._tasks[tname] = tf
            return tf

        return register(fn) if fn is not None else register

    @property
    def queues(self) -> dict[str, QueuePolicy]:
        return dict(self._queues)

    @property
    def tasks(self) -> dict[str, TaskFunction]:
        return dict(self._tasks)

    def _policy(self, queue: str) -> QueuePolicy:
        try:
            return self._queues[queue]
        except KeyError:
            raise UnknownQueue(
                f"queue {queue!r} is not declared by app {self.name!r} (queues: "
                f"{', '.join(sorted(self._queues))}); declare it with app.queue({queue!r})"
            ) from None

    def get_task(self, name: str) -> TaskFunction:
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTask(
                f"task {name!r} is not registered in app {self.name!r} (tasks: "
                f"{', '.join(sorted(self._tasks)) or 'none'})"
            ) from None

    # -- the synchronous facade ---------------------------------------------------------

    def open(self) -> App:
        """Connect and declare the queues now rather than on first use."""
        self._call(lambda b: _noop())
        return self

    def close(self) -> None:
        """Release the facade's connections and its portal thread, if any."""
        with self._lock:
            facade, portal = self._facade, self._portal
            self._facade = self._portal = None
            self._declared = False
        if facade is not None:
            if portal is not None:
                portal.run(facade.close())
                portal.stop()
            else:
                run_inline(facade.close())

    def __enter__(self) -> App:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _broker(self) -> Broker:
        with self._lock:
            if self._facade is None:
                b = broker_from_url(self.broker_url)
                if not b.capabilities.inline:
                    self._portal = Portal(f"offload-portal-{self.name}")
                    # close connections cleanly at exit if the program forgot app.close()
                    atexit.register(_close_at_exit, weakref.ref(self))
                self._facade = b
            return self._facade

    def _run(self, coro: Any) -> Any:
        if self._portal is not None:
            return self._portal.run(coro)
        return run_inline(coro)

    def _call(self, op: Callable[[Broker], Any]) -> Any:
        b = self._broker()
        if not self._declared:
            self._run(b.open())
            self._run(b.declare(list(self._queues.values())))
            self._declared = True
        return self._run(op(b))

    def _enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> list[bool]:
        b = self._broker()
        if connection is not None and not b.capabilities.transactional_enqueue:
            raise Unsupported(
                f"broker {self.broker_url!r} cannot join your transaction "
                "(connection=); use a PostgreSQL broker or drop connection="
            )
        blocking = getattr(b, "enqueue_blocking", None)
        if blocking is not None:
            if not self._declared:
                self._call(lambda _b: _noop())
            if connection is not None:
                return blocking(tasks, connection=connection)
            return blocking(tasks)
        if connection is not None:
            return self._call(lambda br: br.enqueue(tasks, connection=connection))
        return self._call(lambda br: br.enqueue(tasks))

    async def _enqueue_async(self, tasks: Sequence[NewTask]) -> list[bool]:
        loop = asyncio.get_running_loop()
        b = self._loop_brokers.get(loop)
        if b is not None:
            return await b.enqueue(tasks)
        if self._broker().capabilities.inline:
            return self._enqueue(tasks)
        return await asyncio.to_thread(self._enqueue, tasks)

    # -- operations -----------------------------------------------------------------------

    def stats(self, queue: str) -> QueueStats:
        """Counts for one queue: ready, scheduled, leased, dead, paused."""
        self._policy(queue)
        return self._call(lambda b: b.stats(queue))

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetterInfo]:
        """Dead-lettered tasks, oldest first, with the last error and traceback."""
        self._policy(queue)
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
        self._policy(queue)
        return self._call(lambda b: b.requeue_dead(queue, None if id is None else [id]))

    def pause(self, queue: str) -> None:
        """Stop every worker from claiming this queue's tasks; running ones finish."""
        self._policy(queue)
        self._call(lambda b: b.set_paused(queue, True))

    def resume(self, queue: str) -> None:
        self._policy(queue)
        self._call(lambda b: b.set_paused(queue, False))

    def purge(self, queue: str) -> int:
        """Delete every ready and scheduled task of the queue; returns how many."""
        self._policy(queue)
        return self._call(lambda b: b.purge(queue))

    def delete_task(self, queue: str, id: str | None = None, name: str | None = None) -> bool:
        """Delete one task by id or name, in any state. False when there was none."""
        self._policy(queue)
        if (id is None) == (name is None):
            raise BadArguments("delete_task: give exactly one of id= or name=")
        return self._call(lambda b: b.delete(queue, id=id, name=name))

    def metrics(self) -> list[TaskMetrics]:
        """Per task function: counts, failures, wall and CPU time measured by workers."""
        return self._call(lambda b: b.metrics())


async def _noop() -> None:
    return None


def _close_at_exit(ref: weakref.ref[App]) -> None:
    app = ref()
    if app is not None:
        with contextlib.suppress(Exception):
            app.close()
