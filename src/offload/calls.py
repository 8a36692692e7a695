"""Calls: send a task and wait for what its handler returned, within a deadline.

How a result comes back. Each process has one *reply channel* per App (a random name) and
one listener: a daemon thread with its own event loop and broker connection, blocked in
:meth:`~offload.brokers.base.ResultStore.wait_results` (Redis ``BLPOP`` on the channel's
list, PostgreSQL ``LISTEN``, the SQLite doorbell). A call puts the channel and the
result's TTL in the task's headers; the worker that finishes the task stores its outcome
under the task id with that TTL and delivers it to the channel; the listener hands it to
the waiting caller. So a thousand concurrent calls cost one blocked connection, callers
are woken by the broker and never poll, and a caller gives up at its own deadline to the
millisecond (its wait is a local one; the broker is not asked).

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
import functools
import logging
import math
import time
import typing
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .brokers.base import MAX_RESULT_TTL
from .core import envelope as _env
from .core import payload as _payload
from .errors import BadArguments, RemoteError
from .replies import Mailbox, mailbox

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
    "reply_for",
    "result_headers",
    "unrun_headers",
    "wait_result",
    "wait_result_async",
]

log = logging.getLogger("offload.calls")

#: header: the caller process's reply channel
REPLY_TO = "reply-to"
#: header: seconds the result is kept once stored
RESULT_TTL = "result-ttl"
#: seconds a call's result is kept past the call's deadline (a late reader may still want it)
CALL_RESULT_GRACE = 30.0


class Outcome(msgspec.Struct, array_like=True, omit_defaults=True):
    """How a task ended, as stored for its caller: its value, or the error it raised."""

    ok: bool
    value: Any = None
    type: str = ""
    message: str = ""
    traceback: str = ""

    def unwrap(self, task: str, task_id: str) -> Any:
        """The value, or :class:`RemoteError` carrying the remote type, message and
        traceback."""
        if self.ok:
            return self.value
        what = f"{self.type}: {self.message}" if self.type else self.message
        raise RemoteError(
            f"{task} (task {task_id}) failed: {what}",
            type=self.type,
            message=self.message,
            traceback=self.traceback,
        )


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Outcome, ext_hook=_payload.ext_hook)


def encode_outcome(value: Any, task: str) -> bytes:
    """A handler's return value, encoded like an argument; a value that cannot travel
    becomes a failed outcome saying so (the task itself succeeded and is acked)."""
    try:
        args, _, _, _ = _payload.to_wire([value], {})
        return _encoder.encode(Outcome(True, args[0]))
    except (_payload.Refused, TypeError, ValueError, OverflowError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return _encoder.encode(
            Outcome(
                False,
                type="offload.errors.PayloadError",
                message=f"{task} returned a value that cannot travel back to its caller: "
                f"{reason}; return plain data (see the payload types in docs/guide.md)",
            )
        )


def failure_outcome(error: str, traceback: str) -> bytes:
    """A failed outcome from a verdict's error text (``Type: message``)."""
    kind, sep, message = error.partition(": ")
    if not sep or " " in kind:
        kind, message = "", error
    return _encoder.encode(Outcome(False, type=kind, message=message, traceback=traceback))


def decode_outcome(data: bytes) -> Outcome:
    """Stored bytes back into an Outcome; bytes that do not decode are a RemoteError."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Outcome(False, type="offload.errors.PayloadError", message=f"bad result: {exc}")


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


def _prepare(
    tf: TaskFunction,
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None,
    deadline: float,
    headers: Mapping[str, str] | None,
    box: Mailbox,
    options: dict[str, Any],
) -> Any:
    import datetime as _dt

    ttl = min(MAX_RESULT_TTL, max(0.0, deadline - time.time()) + CALL_RESULT_GRACE)
    hdrs = dict(headers or {})
    hdrs[REPLY_TO] = box.channel
    hdrs[RESULT_TTL] = repr(ttl)
    return tf.build(
        args,
        kwargs,
        headers=hdrs,
        deadline=_dt.datetime.fromtimestamp(deadline, _dt.UTC),
        **options,
    )


def _late(tf: TaskFunction, task_id: str, queue: str, started: float, deadline: float) -> Any:
    from .chan.errors import DeadlineExceeded  # not at import: a worker needs no chan

    return DeadlineExceeded(
        f"{tf.name} (task {task_id}, queue {queue!r}): no result within its deadline "
        f"({deadline - started:.3g}s): the task is slow, queued behind others, or no "
        f"worker serves queue {queue!r}; raise the timeout or add workers"
    )


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
    registry = tf.registry
    deadline = _deadline(registry, timeout, context)
    started = time.time()
    box = mailbox(registry)
    new = _prepare(tf, args, kwargs, deadline, headers, box, options)
    box.start()
    waiter = box.expect(new.id)
    try:
        registry.enqueue([new])
        remaining = deadline - time.time()
        assert waiter.event is not None
        if remaining <= 0 or not waiter.event.wait(remaining):
            raise _late(tf, new.id, new.queue, started, deadline)
    finally:
        box.forget(new.id, waiter)
    assert waiter.value is not None
    return _returned(tf, decode_outcome(waiter.value).unwrap(tf.name, new.id))


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
    registry = tf.registry
    deadline = _deadline(registry, timeout, context)
    started = time.time()
    box = mailbox(registry)
    new = _prepare(tf, args, kwargs, deadline, headers, box, options)
    if not box._started.is_set() or box._error is not None:
        await asyncio.to_thread(box.start)
    loop = asyncio.get_running_loop()
    waiter = box.expect(new.id, loop)
    try:
        assert waiter.future is not None
        try:
            # the deadline bounds the send too: a send still under way when it passes
            # lands a task that its worker drops unrun
            await asyncio.wait_for(registry.enqueue_async([new]), deadline - time.time())
            value = await asyncio.wait_for(asyncio.shield(waiter.future), deadline - time.time())
        except TimeoutError:
            raise _late(tf, new.id, new.queue, started, deadline) from None
    finally:
        box.forget(new.id, waiter)
    return _returned(tf, decode_outcome(value).unwrap(tf.name, new.id))


def _result_timeout(registry: Registry, timeout: float | None) -> float:
    if timeout is None:
        return registry.call_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise BadArguments(f"result(timeout={timeout!r}): give seconds, 0 or more")
    return float(timeout)


def wait_result(handle: TaskHandle, timeout: float | None = None) -> Any:
    """Block until the handle's task stored its result (see :meth:`TaskHandle.result`)."""
    registry, tf = _handle_parts(handle)
    limit = _result_timeout(registry, timeout)
    started = time.time()
    box = mailbox(registry)
    box.start()
    waiter = box.expect(handle.id)
    try:
        data = box.fetch(handle.id)
        if data is None:
            assert waiter.event is not None
            if not waiter.event.wait(limit):
                raise _late(tf, handle.id, handle.queue, started, started + limit)
            data = waiter.value
    finally:
        box.forget(handle.id, waiter)
    assert data is not None
    return _returned(tf, decode_outcome(data).unwrap(tf.name, handle.id))


async def wait_result_async(handle: TaskHandle, timeout: float | None = None) -> Any:
    """:func:`wait_result` for async code."""
    registry, tf = _handle_parts(handle)
    limit = _result_timeout(registry, timeout)
    started = time.time()
    box = mailbox(registry)
    if not box._started.is_set() or box._error is not None:
        await asyncio.to_thread(box.start)
    waiter = box.expect(handle.id, asyncio.get_running_loop())
    try:
        data = await box.fetch_async(handle.id)
        if data is None:
            assert waiter.future is not None
            try:
                data = await asyncio.wait_for(asyncio.shield(waiter.future), limit)
            except TimeoutError:
                raise _late(tf, handle.id, handle.queue, started, started + limit) from None
    finally:
        box.forget(handle.id, waiter)
    return _returned(tf, decode_outcome(data).unwrap(tf.name, handle.id))


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


# -- the worker's side --------------------------------------------------------------------


def wants_result(headers: Mapping[str, str]) -> bool:
    """Whether the sender asked for this task's result to be stored."""
    return RESULT_TTL in headers


def result_ttl(headers: Mapping[str, str]) -> float:
    """The TTL the sender asked for, within what brokers keep (a bad one: a minute)."""
    try:
        ttl = float(headers[RESULT_TTL])
    except (KeyError, TypeError, ValueError):
        return 60.0
    return ttl if 0 < ttl <= MAX_RESULT_TTL else min(MAX_RESULT_TTL, 60.0)


def past_deadline(headers: Mapping[str, str], now: float) -> bool:
    """Whether the task's deadline header is before ``now`` (the broker's clock at claim)."""
    raw = headers.get(_env.DEADLINE)
    if raw is None:
        return False
    try:
        return float(raw) < now
    except (TypeError, ValueError):
        return False


class _Addressed(msgspec.Struct):
    """The part of an envelope a worker needs to answer a task it never ran: its headers.
    Every other field is skipped, not decoded, so arguments that do not decode (or a
    newer envelope version) do not stop the caller from hearing why."""

    headers: dict[str, str] = {}


_addressed = msgspec.msgpack.Decoder(_Addressed)


def unrun_headers(payload: bytes | None) -> Mapping[str, str]:
    """The headers of a claimed task's payload, or none when even they do not decode."""
    if payload is None:
        return {}
    try:
        return _addressed.decode(payload).headers
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return {}


def reply_for(
    info: Any, verdict: Any, payload: bytes | None = None
) -> tuple[bytes, float, str | None] | None:
    """What a worker stores for a finished task whose sender wants its result: the
    outcome, its TTL and the reply channel; None when the task will run again (a retry
    keeps the caller waiting) or nobody asked.

    ``info`` is None for a claim dead-lettered before it ran (bad arguments, a payload
    that does not decode, an unknown task function, a retry policy exhausted by workers
    that died): there is no TaskInfo, so the headers are read from its ``payload``, and
    its caller gets RemoteError with the reason now rather than DeadlineExceeded later."""
    if info is None:
        if verdict.kind != "dead":
            return None
        headers = unrun_headers(payload)
        if RESULT_TTL not in headers:
            return None
        data = failure_outcome(verdict.error, verdict.traceback)
        return data, result_ttl(headers), headers.get(REPLY_TO)
    if verdict.kind == "ack":
        data = encode_outcome(info._result, info.task)
    elif verdict.kind == "dead":
        data = failure_outcome(verdict.error, verdict.traceback)
    else:
        return None
    return data, result_ttl(info.headers), info.headers.get(REPLY_TO)
