"""Calls: send a task and wait for what its handler returned, within a deadline.

How a result comes back. Each process has one *reply channel* per App (a random name) and
one listener: a daemon thread with its own event loop and broker connection, blocked in
:meth:`~offload.brokers.base.ResultStore.wait_results` (Redis ``BLPOP`` on the channel's
list, PostgreSQL ``LISTEN``, the SQLite doorbell). A call puts the channel and the
result's TTL in the task's headers; the worker that finishes the task stores its outcome
under the task id with that TTL and delivers it to the channel; the listener hands it to
the waiting caller. So a thousand concurrent calls cost one blocked connection, callers
are woken by the broker and never poll, and a caller gives up at its own deadline to the
millisecond (its wait is a local one; the broker is not asked). A blocking call whose
broker can do the whole round trip on the calling thread (Redis on a single server, see
:class:`~offload.replies.BlockingCall`) does that instead, with a reply channel of its
thread's: one write and one read, no hop to a sender or listener thread.

Deadlines. A call's deadline is the ``timeout`` given, else the remaining time of the
``context`` given, else that of the task the call is made from, else the App's
``call_timeout`` (default 30 s), and never later than any of these. The deadline travels
in the task's ``deadline`` header: a worker drops a task it claims after that moment
without running it (counted as ``expired`` in ``offload metrics``), and a running handler
sees ``current_task().context`` cancelled at it. Past it the caller gets
:class:`~offload.chan.DeadlineExceeded`.

Outcomes travel as msgpack with the arguments' own codec (:mod:`offload.core.payload`):
what a handler returns arrives as it was returned, or, when it cannot travel, as a
:class:`~offload.errors.RemoteError` of type ``offload.errors.PayloadError``. A handler
that raises, ``Fail``, and a retry policy that gives up all give the caller a
``RemoteError``; a failure that will be retried keeps the caller waiting.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import logging
import math
import time
import typing
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .brokers.base import MAX_RESULT_TTL, NewTask
from .errors import BadArguments
from .outcomes import (
    REPLY_TO,
    RESULT_TTL,
    Outcome,
    decode_outcome,
    encode_outcome,
    failure_outcome,
    past_deadline,
    reply_for,
    result_ttl,
    unrun_headers,
    wants_result,
)
from .replies import BlockingCall, Late, Mailbox, mailbox

if TYPE_CHECKING:
    from .registry import Registry
    from .task import TaskFunction, TaskHandle

__all__ = [
    "REPLY_TO",
    "RESULT_TTL",
    "Calling",
    "HandleResult",
    "Outcome",
    "call",
    "call_async",
    "decode_outcome",
    "encode_outcome",
    "failure_outcome",
    "mailbox",
    "past_deadline",
    "reply_for",
    "result_headers",
    "result_ttl",
    "unrun_headers",
    "wait_result",
    "wait_result_async",
    "wants_result",
]

log = logging.getLogger("offload.calls")
T = TypeVar("T")

#: seconds a call's result is kept past the call's deadline (a late reader may still want it)
CALL_RESULT_GRACE = 30.0


def result_headers(
    registry: Registry, headers: Mapping[str, str] | None, ttl: float
) -> dict[str, str]:
    """Headers asking the worker to store the result for ``ttl`` seconds and deliver it to
    this process's reply channel (so :meth:`TaskHandle.result` is woken by the broker)."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_RESULT_TTL:
        raise BadArguments(
            f"result_ttl={ttl!r}: give seconds, more than 0 and at most "
            f"{MAX_RESULT_TTL:,.0f} (a day)"
        )
    out = dict(headers or {})
    out[RESULT_TTL] = repr(float(ttl))
    out[REPLY_TO] = mailbox(registry).channel
    return out


class HandleResult:
    """The waiting half of :class:`~offload.task.TaskHandle` (a mixin, no state)."""

    __slots__ = ()

    def result(self, timeout: float | None = None) -> Any:
        """Block until the task's result is stored (it was sent with ``result_ttl=``) and
        return it; :class:`~offload.errors.RemoteError` when the task failed for good,
        :class:`~offload.chan.DeadlineExceeded` after ``timeout`` seconds (None: the App's
        ``call_timeout``). Woken by the broker, never by polling."""
        return wait_result(self, timeout)  # type: ignore[arg-type]

    async def result_async(self, timeout: float | None = None) -> Any:
        """:meth:`result` for async code."""
        return await wait_result_async(self, timeout)  # type: ignore[arg-type]


class Calling:
    """The calling half of :class:`~offload.task.TaskFunction` (a mixin: it adds methods,
    no state): send the task, then wait for what its handler returned."""

    registry: Registry

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """Send the task and block until its result arrives; returns what the handler
        returned. Deadline: the current task's or the App's ``call_timeout``, see
        :meth:`call_with`. Raises :class:`~offload.errors.RemoteError` when the handler
        failed for good, :class:`~offload.chan.DeadlineExceeded` past the deadline."""
        return call(self, args, kwargs)

    async def call_async(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`call` for async code; the event loop is never blocked."""
        return await call_async(self, args, kwargs)

    def call_with(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        context: Any = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`call` with options: ``timeout`` seconds, or a ``context`` (an
        ``offload.chan.Context``) whose deadline applies; the earliest of these and the
        current task's deadline wins, else the App's ``call_timeout``. A worker drops
        the task unrun if it claims it after the deadline."""
        return call(
            self, args, kwargs, timeout=timeout, context=context, headers=headers, queue=queue
        )

    async def call_with_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        context: Any = None,
        queue: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """:meth:`call_with` for async code."""
        return await call_async(
            self, args, kwargs, timeout=timeout, context=context, headers=headers, queue=queue
        )


# -- the caller's side ------------------------------------------------------------------


def _deadline(registry: Registry, timeout: float | None, context: Any) -> float:
    """The call's deadline, epoch seconds (see the module docstring)."""
    from .task import _current

    now = time.time()
    found: list[float] = []
    if timeout is not None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout <= MAX_RESULT_TTL
            or math.isnan(timeout)
        ):
            raise BadArguments(
                f"timeout={timeout!r}: give seconds, more than 0 and at most "
                f"{MAX_RESULT_TTL:,.0f} (a day)"
            )
        found.append(now + float(timeout))
    if context is not None:
        remaining = context.remaining()
        if remaining is not None:
            found.append(now + remaining)
    parent = _current.get()
    if parent is not None and parent._deadline is not None:
        found.append(parent._deadline)
    if not found:
        found.append(now + registry.call_timeout)
    return min(found)


class _Wait:
    """One caller waiting for one task's result, from a call or from a handle: what the
    blocking and the async driver share. Every step (starting the listener, sending the
    task, reading a stored result, waiting for delivery) gets only the time left before
    ``deadline``, so a slow or unreachable broker ends in DeadlineExceeded at the
    deadline, not whenever its socket gives up."""

    __slots__ = ("box", "deadline", "key", "queue", "registry", "started", "tf")

    def __init__(
        self,
        tf: TaskFunction,
        key: str,
        queue: str,
        started: float,
        deadline: float,
        box: Mailbox | None = None,
    ) -> None:
        self.tf, self.registry, self.key, self.queue = tf, tf.registry, key, queue
        self.started, self.deadline = started, deadline
        self.box = box if box is not None else mailbox(tf.registry)

    def left(self) -> float:
        return self.deadline - time.time()

    def late(self, step: str) -> Exception:
        from .chan.errors import DeadlineExceeded  # not at import: a worker needs no chan

        budget = f"{self.deadline - self.started:.3g}s"
        where = f"{self.tf.name} (task {self.key}, queue {self.queue!r})"
        if step == "wait":
            return DeadlineExceeded(
                f"{where}: no result within its deadline ({budget}): the task is slow, "
                f"queued behind others, or no worker serves queue {self.queue!r}; raise "
                "the timeout or add workers"
            )
        kind = str(self.registry.broker_url).partition(":")[0]  # no credentials in errors
        return DeadlineExceeded(
            f"{where}: {step} took the whole deadline ({budget}): the {kind} broker is slow "
            "or unreachable; check it, or raise the timeout"
        )

    def value(self, data: bytes) -> Any:
        return _returned(self.tf, decode_outcome(data).unwrap(self.tf.name, self.key))


def _wait(w: _Wait, new: NewTask | None) -> Any:
    """The blocking driver: send ``new`` (a call) or else look for a result stored
    already (a handle), then wait for the listener to deliver it."""
    box, step, waiter = w.box, "starting the results listener", None
    try:
        box.start(w.left())
        waiter = box.expect(w.key)  # before sending: no result can come before it
        data = None
        if new is not None:
            step = "sending the task"
            box.send([new], w.left())
        else:
            step = "reading the stored result"
            data = box.fetch(w.key, w.left())
        if data is None:
            step = "wait"
            assert waiter.event is not None
            if not waiter.event.wait(max(0.0, w.left())):
                raise Late
            data = waiter.value
    except Late:
        raise w.late(step) from None
    finally:
        if waiter is not None:
            box.forget(w.key, waiter)
    assert data is not None
    return w.value(data)


def _call_direct(w: _Wait, new: NewTask, broker: BlockingCall, channel: str) -> Any:
    """The blocking driver when the broker sends and waits on this thread itself (see
    :class:`~offload.replies.BlockingCall`): one write and one read for the call."""
    try:
        data = broker.call_blocking(new, channel, w.left())
    except TimeoutError:
        raise w.late("sending the task") from None
    if data is None:
        raise w.late("wait")
    return w.value(data)


async def _wait_async(w: _Wait, new: NewTask | None) -> Any:
    """:func:`_wait` for async code: the event loop is never blocked."""
    box, step, waiter = w.box, "starting the results listener", None
    try:
        if not box.ready:
            await asyncio.to_thread(box.start, w.left())
        loop = asyncio.get_running_loop()
        waiter = box.expect(w.key, loop)
        data = None
        if new is not None:
            step = "sending the task"  # a send cut short may land: workers drop it unrun
            if loop in w.registry._loop_brokers:  # a worker's loop: its own async broker
                await _within(w.registry.enqueue_async([new]), w.left())
            else:  # a blocking send on a thread that may hang, never on this loop
                await _within(asyncio.wrap_future(box.submit([new])), w.left())
        else:
            step = "reading the stored result"
            data = await _within(box.fetch_async(w.key), w.left())
        if data is None:
            step = "wait"
            assert waiter.future is not None
            data = await _within(asyncio.shield(waiter.future), w.left())
    except Late:
        raise w.late(step) from None
    finally:
        if waiter is not None:
            box.forget(w.key, waiter)
    return w.value(data)


async def _within(aw: Awaitable[T], seconds: float) -> T:
    """``await aw`` for at most ``seconds``, then cancel it and raise :class:`Late` (not
    TimeoutError: ``aw`` may raise that for a reason of its own)."""
    fut = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait((fut,), timeout=max(0.0, seconds))
    except BaseException:  # the caller was cancelled: so is the step
        fut.cancel()
        raise
    if not done:
        fut.cancel()
        raise Late
    return fut.result()


def _new_call(
    tf: TaskFunction,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    timeout: float | None,
    context: Any,
    headers: Mapping[str, str] | None,
    options: dict[str, Any],
    box: Mailbox,
    channel: str,
) -> tuple[_Wait, NewTask]:
    """A call's task, asking for its result on ``channel`` until the call's deadline
    plus a grace, and its waiter."""
    started = time.time()
    deadline = _deadline(tf.registry, timeout, context)
    ttl = min(MAX_RESULT_TTL, max(0.0, deadline - started) + CALL_RESULT_GRACE)
    hdrs = dict(headers or {})
    hdrs[REPLY_TO] = channel
    hdrs[RESULT_TTL] = repr(ttl)
    when = _dt.datetime.fromtimestamp(deadline, _dt.UTC)
    new = tf.build(args, kwargs, headers=hdrs, deadline=when, **options)
    return _Wait(tf, new.id, new.queue, started, deadline, box), new


def call(
    tf: TaskFunction,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    context: Any = None,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> Any:
    """Send ``tf(*args, **kwargs)`` and block until its result (see :meth:`TaskFunction.call`)."""
    box = mailbox(tf.registry)
    direct = box.direct()
    if direct is None:
        return _wait(
            *_new_call(tf, args, kwargs, timeout, context, headers, options, box, box.channel)
        )
    channel = box.thread_channel()
    w, new = _new_call(tf, args, kwargs, timeout, context, headers, options, box, channel)
    return _call_direct(w, new, direct, channel)


async def call_async(
    tf: TaskFunction,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    timeout: float | None = None,
    context: Any = None,
    headers: Mapping[str, str] | None = None,
    **options: Any,
) -> Any:
    """:func:`call` for async code: the event loop is never blocked."""
    box = mailbox(tf.registry)
    w, new = _new_call(tf, args, kwargs, timeout, context, headers, options, box, box.channel)
    return await _wait_async(w, new)


def _handle_wait(handle: TaskHandle, timeout: float | None) -> _Wait:
    registry, tf = _handle_parts(handle)
    if timeout is None:
        limit = registry.call_timeout
    elif isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise BadArguments(f"result(timeout={timeout!r}): give seconds, 0 or more")
    else:
        limit = float(timeout)
    started = time.time()
    return _Wait(tf, handle.id, handle.queue, started, started + limit)


def wait_result(handle: TaskHandle, timeout: float | None = None) -> Any:
    """Block until the handle's task stored its result (see :meth:`TaskHandle.result`)."""
    return _wait(_handle_wait(handle, timeout), None)


async def wait_result_async(handle: TaskHandle, timeout: float | None = None) -> Any:
    """:func:`wait_result` for async code."""
    return await _wait_async(_handle_wait(handle, timeout), None)


def _handle_parts(handle: TaskHandle) -> tuple[Registry, TaskFunction]:
    registry = handle._registry
    if registry is None:
        raise BadArguments(
            f"task {handle.id}: this handle was not made by send, so it has no App to ask "
            "for the result"
        )
    tf = registry.tasks.get(handle.task)
    if tf is None:
        raise BadArguments(f"task {handle.id}: task function {handle.task!r} is not registered")
    return registry, tf


# -- return values ------------------------------------------------------------------------


def _returned(tf: TaskFunction, value: Any) -> Any:
    """Rebuild a typed return value (a dataclass, a Struct...) from its wire form, using
    the handler's return annotation, as arguments are rebuilt from parameter hints."""
    hint = _return_hint(tf)
    if hint is None:
        return value
    try:
        return msgspec.convert(value, hint, strict=False)
    except Exception:  # a hint that does not fit: the value as it came
        return value


@functools.lru_cache(maxsize=4096)
def _return_hint(tf: TaskFunction) -> Any:
    from .task import _needs_convert

    try:
        hint = typing.get_type_hints(tf.fn).get("return")
    except Exception:  # unresolvable annotations: no conversion
        return None
    if hint is None or hint is type(None) or not _needs_convert(hint):
        return None
    return hint
