"""Events: tell every interested service that something happened.

``@app.on("user.signed_up", queue="emails")`` registers a subscriber: a task function
taking the event's payload as its one argument. ``app.publish("user.signed_up", {...})``
enqueues one task per subscriber, each on its own queue, in ONE broker enqueue: one
transaction on SQLite and PostgreSQL, one MULTI/EXEC on a single Redis server. So either
every subscriber gets the event or none does (a broker outage raises
:class:`~offload.errors.BrokerUnavailable` and nothing was enqueued).

On Redis Cluster, queues live in different slots and no transaction spans them: each
subscriber's task is stored atomically by itself, but a failure part-way leaves the event
delivered to some subscribers. Publish with ``key=`` there, and publish again after an
error: the subscribers that have it already are skipped.

``key=`` makes a publish idempotent per subscriber: the tasks are named
``<event>:<key>:<subscriber>``, so a second publish with the same key while the first is
queued or within its queue's dedup window delivers nothing new (and is not an error).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .brokers.base import NewTask
from .errors import BadArguments, ConfigError

if TYPE_CHECKING:
    from .registry import Registry
    from .task import TaskFunction, TaskHandle

__all__ = [
    "EVENT",
    "Publishing",
    "check_event",
    "on_event",
    "publish",
    "publish_async",
    "subscribe",
    "subscribers",
]

log = logging.getLogger("offload.events")
F = TypeVar("F", bound=Callable[..., Any])

#: header: the event a subscriber's task carries
EVENT = "event"
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,200}$")


def check_event(event: str) -> str:
    """An event name: 1-200 letters, digits, '_', '.', ':', '/' or '-'."""
    if not isinstance(event, str) or not _EVENT_NAME.match(event):
        raise ConfigError(
            f"event name {event!r:.80}: use 1-200 letters, digits, '_', '.', ':', '/' or '-' "
            "(e.g. 'user.signed_up')"
        )
    return event


def check_subscriber(event: str, fn: Callable[..., Any], where: str = "@app.on") -> None:
    """A subscriber must accept the payload as its one positional argument."""
    try:
        inspect.signature(fn).bind(None)
    except TypeError as exc:
        raise ConfigError(
            f"{where}({event!r}): {getattr(fn, '__qualname__', fn)!r} must take the event's "
            f"payload as its one argument ({exc})"
        ) from None
    except ValueError:  # no signature to check (a builtin): trust it
        pass


def subscribe(registry: Registry, event: str, tf: TaskFunction) -> TaskFunction:
    """Add ``tf`` to the subscribers of ``event`` (once)."""
    subs = registry.events.setdefault(event, [])
    if tf not in subs:
        subs.append(tf)
    return tf


def on_event(
    registry: Registry,
    event: str,
    register: Callable[[Callable[..., Any]], TaskFunction],
    where: str = "@app.on",
) -> Callable[[F], TaskFunction]:
    """The decorator behind ``@app.on`` and ``@service.on``: check the event name now and
    the function when it is decorated, make it a task function with ``register`` (the
    App's or a Service's, so the subscriber belongs to that service and runs in its
    pool), then subscribe it."""
    check_event(event)

    def decorate(fn: F) -> TaskFunction:
        check_subscriber(event, fn, where)
        return subscribe(registry, event, register(fn))

    return decorate


def subscribers(registry: Registry, event: str) -> list[TaskFunction]:
    """The task functions subscribed to ``event``, in the order they were registered."""
    return list(registry.events.get(check_event(event), ()))


def _build(
    registry: Registry, event: str, payload: Any, key: str | None
) -> list[tuple[str, NewTask]]:
    check_event(event)
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise BadArguments(f"publish({event!r}): key {key!r:.80} must be a string of 1-200 chars")
    built: list[tuple[str, NewTask]] = []
    for tf in registry.events.get(event, ()):
        name = None if key is None else f"{event}:{key}:{tf.name}"[:500]
        built.append((tf.name, tf.build((payload,), None, name=name, headers={EVENT: event})))
    if not built:
        log.debug("event %r published with no subscribers: nothing enqueued", event)
    return built


def publish(
    registry: Registry, event: str, payload: Any, key: str | None = None
) -> list[TaskHandle]:
    """Enqueue the event for every subscriber in one broker transaction; returns the
    handles of the tasks created (with ``key``, those of subscribers that had it already
    are left out). Raises :class:`~offload.errors.PayloadError` for a payload that cannot
    travel, before anything is sent."""
    from .task import TaskHandle

    built = _build(registry, event, payload, key)
    if not built:
        return []
    created = registry.enqueue([t for _, t in built])
    return _handles(registry, built, created, TaskHandle)


async def publish_async(
    registry: Registry, event: str, payload: Any, key: str | None = None
) -> list[TaskHandle]:
    """:func:`publish` for async code."""
    from .task import TaskHandle

    built = _build(registry, event, payload, key)
    if not built:
        return []
    created = await registry.enqueue_async([t for _, t in built])
    return _handles(registry, built, created, TaskHandle)


def _handles(
    registry: Registry,
    built: list[tuple[str, NewTask]],
    created: list[bool],
    handle: type[TaskHandle],
) -> list[TaskHandle]:
    return [
        handle(t.id, t.queue, task, t.name, registry)
        for (task, t), ok in zip(built, created, strict=True)
        if ok
    ]


class Publishing:
    """The events half of :class:`~offload.app.App` (a mixin: methods, no state)."""

    registry: Registry

    def task(self, fn: Any = None, **options: Any) -> Any:
        raise NotImplementedError  # supplied by App

    def on(
        self, event: str, *, queue: str = "default", name: str | None = None
    ) -> Callable[[F], TaskFunction]:
        """Subscribe a task function to ``event``: ``@app.on("user.signed_up",
        queue="emails")``. It is called with the published payload as its one argument,
        on its own queue; it is also an ordinary task function (``send``, ``call``) of the
        ``"default"`` service (``@service.on`` subscribes one of another service)."""
        return on_event(self.registry, event, lambda fn: self.task(fn, queue=queue, name=name))

    def subscribers(self, event: str) -> list[TaskFunction]:
        """The task functions subscribed to ``event``, in registration order."""
        return subscribers(self.registry, event)

    def publish(self, event: str, payload: Any = None, key: str | None = None) -> list[Any]:
        """Enqueue ``payload`` for every subscriber of ``event``, all in one broker
        transaction (all or none); returns the tasks' handles. With ``key`` a repeated
        publish is a no-op per subscriber within its queue's dedup window. Publishing an
        event nobody subscribes to enqueues nothing (logged at debug). Raises
        :class:`~offload.errors.PayloadError` before sending a payload that cannot travel,
        :class:`~offload.errors.BrokerUnavailable` (nothing enqueued) in an outage."""
        return publish(self.registry, event, payload, key)

    async def publish_async(
        self, event: str, payload: Any = None, key: str | None = None
    ) -> list[Any]:
        """:meth:`publish` for async code."""
        return await publish_async(self.registry, event, payload, key)
