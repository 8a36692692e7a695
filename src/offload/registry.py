"""What task functions and workers need of their App, and nothing else: its name, queue
policies, task functions, and a way to reach the broker. Package-internal (``app.registry``):
the App is the public face, this is the seam the rest of the package uses, so task.py and
the worker never touch the App's private attributes and task.py never imports app.py.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._sync import Portal, run_inline
from .brokers import broker_from_url
from .brokers.base import BlockingEnqueue, Broker, NewTask
from .core.policy import QueuePolicy
from .errors import ConfigError, UnknownQueue, Unsupported
from .service import check_executors

if TYPE_CHECKING:
    from .periodic import Schedule
    from .replies import Mailbox
    from .service import Service
    from .task import TaskFunction

__all__ = ["Registry"]


class Registry:
    """An App's queues and task functions, and its connections to the broker: the
    synchronous facade's (one broker on a portal thread, or inline for SQLite) and those
    workers opened on their own event loops, which async sends on that loop reuse."""

    def __init__(self, name: str, broker: str | Broker) -> None:
        self.name = name
        if isinstance(broker, str):
            broker_from_url(broker)  # validate the URL now; nothing connects yet
            self.broker_url = broker
            self._given: Broker | None = None
        elif isinstance(broker, Broker):
            self.broker_url = getattr(broker, "url", repr(broker))
            self._given = broker
        else:
            raise ConfigError(
                f"broker {broker!r}: give a URL (sqlite:///offload.db, redis://..., "
                "postgresql://...) or a Broker instance"
            )
        self.queues: dict[str, QueuePolicy] = {"default": QueuePolicy("default")}
        self.tasks: dict[str, TaskFunction] = {}
        self.services: dict[str, Service] = {}  # filled by the App: "default" first
        self.lock = threading.Lock()
        self._facade: Broker | None = None
        self._blocking: Callable[..., list[bool]] | None = None
        self._portal: Portal | None = None
        self._declared = False
        self._loop_brokers: dict[asyncio.AbstractEventLoop, Broker] = {}
        #: seconds a call waits when nothing else gives it a deadline (App(call_timeout=))
        self.call_timeout = 30.0
        #: this process's reply channel and its listener, made by the first call
        self.mailbox: Mailbox | None = None
        #: event name -> the subscribers' task functions (``@app.on``)
        self.events: dict[str, list[TaskFunction]] = {}
        #: task name -> its schedule (``@app.periodic``)
        self.schedules: dict[str, Schedule] = {}
        self._version: str | None = None

    @property
    def version(self) -> str:
        """The code version this process sends tasks with (workers read it when they meet
        a task function they do not know: a newer deploy's, or a stale one's).
        ``$OFFLOAD_VERSION``, else the installed version of the package that defines the
        first task function, else empty. Read once."""
        if self._version is None:
            version = os.environ.get("OFFLOAD_VERSION", "")
            if not version:
                modules = [t.fn.__module__ for t in self.tasks.values()]
                top = next((m.split(".")[0] for m in modules if not m.startswith("offload")), "")
                with contextlib.suppress(Exception):
                    import importlib.metadata  # only here: it costs an idle worker 5 modules

                    version = importlib.metadata.version(top) if top else ""
            self._version = version[:64]
        return self._version

    # -- the model ------------------------------------------------------------------------

    def policy(self, queue: str) -> QueuePolicy:
        """The declared policy of ``queue``; :class:`UnknownQueue` lists the declared ones."""
        try:
            return self.queues[queue]
        except (KeyError, TypeError):
            raise UnknownQueue(
                f"queue {queue!r} is not declared by app {self.name!r} (queues: "
                f"{', '.join(sorted(self.queues))}); declare it with app.queue({queue!r})"
            ) from None

    def check_executors(self, queues: Sequence[str]) -> None:
        """Refuse (ConfigError naming the service) to serve ``queues`` when one of their
        task functions needs an executor this worker does not have."""
        check_executors(self, queues)

    def declare(self, policy: QueuePolicy) -> None:
        with self.lock:
            self.queues[policy.name] = policy
            self._declared = False

    # -- brokers ------------------------------------------------------------------------

    def new_broker(self) -> Broker:
        """An unopened broker for one event loop. A Broker instance given to the App serves
        the first caller; later ones get ``type(broker)(broker.url)``, the constructor every
        broker that passes :func:`offload.testing.check_broker` with a URL factory has."""
        given = self._given
        if given is None:
            return broker_from_url(self.broker_url)
        with self.lock:
            if self._given is not None:
                self._given = None
                self._instance_type = type(given)
                return given
        return self._instance_type(self.broker_url)  # type: ignore[call-arg]

    def attach(self, loop: asyncio.AbstractEventLoop, broker: Broker) -> None:
        """A worker opened ``broker`` on ``loop``: async sends from that loop use it."""
        self._loop_brokers[loop] = broker

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_brokers.pop(loop, None)

    def loop_broker(self, loop: asyncio.AbstractEventLoop) -> Broker | None:
        """The broker opened on ``loop`` (:meth:`attach`), if any: calls made on that loop
        use it directly, without a thread hop to the facade."""
        return self._loop_brokers.get(loop)

    def facade(self) -> Broker:
        with self.lock:
            if self._facade is None:
                b = self._given_or_new()
                if not b.capabilities.inline:
                    self._portal = Portal(f"offload-portal-{self.name}")
                    # close connections cleanly at exit if the program forgot app.close()
                    atexit.register(_close_at_exit, weakref.ref(self))
                # checked once: a runtime Protocol check costs ~30 us, a send ~100 us
                self._blocking = b.enqueue_blocking if isinstance(b, BlockingEnqueue) else None
                self._facade = b
            return self._facade

    def _given_or_new(self) -> Broker:
        given = self._given
        if given is not None:
            self._given = None
            self._instance_type = type(given)
            return given
        if hasattr(self, "_instance_type"):
            return self._instance_type(self.broker_url)  # type: ignore[call-arg]
        return broker_from_url(self.broker_url)

    def run(self, coro: Awaitable[Any]) -> Any:
        if self._portal is not None:
            return self._portal.run(coro)
        return run_inline(coro)

    def call(self, op: Callable[[Broker], Awaitable[Any]], *, declare: bool = True) -> Any:
        """Run ``op(broker)`` on the facade, opening it and (unless ``declare`` is False:
        reading what the broker holds as it is) declaring the queues first."""
        b = self.facade()
        if not self._declared:
            if not declare:
                self.run(b.open())
                return self.run(op(b))
            self.run(b.open())
            self.run(b.declare(list(self.queues.values())))
            self._declared = True
        return self.run(op(b))

    def enqueue(self, tasks: Sequence[NewTask], connection: Any = None) -> list[bool]:
        b = self.facade()
        if connection is not None and not b.capabilities.transactional_enqueue:
            raise Unsupported(
                f"broker {self.broker_url!r} cannot join your transaction "
                "(connection=); use a PostgreSQL broker or drop connection="
            )
        blocking = self._blocking
        if blocking is not None:
            if not self._declared:
                self.call(lambda _b: _noop())
            if connection is not None:
                return blocking(tasks, connection=connection)
            return blocking(tasks)
        if connection is not None:
            return self.call(lambda br: br.enqueue(tasks, connection=connection))  # type: ignore[call-arg]
        return self.call(lambda br: br.enqueue(tasks))

    async def enqueue_async(self, tasks: Sequence[NewTask]) -> list[bool]:
        loop = asyncio.get_running_loop()
        b = self._loop_brokers.get(loop)
        if b is not None:
            return await b.enqueue(tasks)
        if self.facade().capabilities.inline:
            return self.enqueue(tasks)
        return await asyncio.to_thread(self.enqueue, tasks)

    def close(self) -> None:
        """Release the facade's connections, its portal thread and the results listener."""
        box, self.mailbox = self.mailbox, None
        if box is not None:
            box.close()
        with self.lock:
            facade, portal = self._facade, self._portal
            self._facade = self._portal = None
            self._declared = False
        if facade is not None:
            if portal is not None:
                portal.run(facade.close())
                portal.stop()
            else:
                run_inline(facade.close())


async def _noop() -> None:
    return None


def _close_at_exit(ref: weakref.ref[Registry]) -> None:
    registry = ref()
    if registry is not None:
        with contextlib.suppress(Exception):
            registry.close()
