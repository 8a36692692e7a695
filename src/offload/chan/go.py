"""``go``: start a function concurrently and keep a handle on its outcome.

A plain function runs on its own daemon thread with a copy of the caller's contextvars (like
a goroutine, it does not keep the process alive). A coroutine function becomes a task on the
running event loop; with no loop running it gets its own loop on its own thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from offload.chan._timeout import timeout as _check_timeout
from offload.chan.chan import Chan

__all__ = ["Handle", "go"]

T = TypeVar("T")

# Tasks started by go() stay referenced until they finish: the loop itself holds only weak
# references, and a dropped handle must not let a running task be collected.
_TASKS: set[asyncio.Task[Any]] = set()


class Handle(Generic[T]):
    """The outcome of one :func:`go` call: ``join()``, ``await handle`` or select on ``done()``."""

    __slots__ = ("_done", "_exc", "_result", "task", "thread")

    def __init__(self) -> None:
        self._done: Chan[Any] = Chan()
        self._result: Any = None
        self._exc: BaseException | None = None
        self.task: asyncio.Task[Any] | None = None
        self.thread: threading.Thread | None = None

    def done(self) -> Chan[Any]:
        """A channel closed when the function has returned or raised."""
        return self._done

    def finished(self) -> bool:
        """True once the function has returned or raised."""
        return self._done._closed

    def join(self, timeout: float | None = None) -> T:
        """Block until finished; return its result or raise its exception.

        Raises TimeoutError if it is still running after ``timeout`` seconds (accepted
        values as for :meth:`Chan.recv`).
        """
        if timeout is not None:
            timeout = _check_timeout(timeout, "Handle.join(timeout=...)")
        self._done.recv_ok(timeout)
        return self._outcome()

    async def async_join(self) -> T:
        """Await the result (or exception) without blocking the loop, from any loop."""
        await self._done.async_recv_ok()
        return self._outcome()

    def __await__(self) -> Any:
        return self.async_join().__await__()

    def _outcome(self) -> T:
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[no-any-return]

    def _finish(self, result: Any, exc: BaseException | None) -> None:
        self._result = result
        self._exc = exc
        self._done.close()

    def _run_thread(
        self, ctx: contextvars.Context, fn: Callable[..., Any], a: Any, kw: Any
    ) -> None:
        try:
            r = ctx.run(fn, *a, **kw)
            if inspect.iscoroutine(r):
                r = ctx.run(asyncio.run, r)
        except BaseException as e:
            self._finish(None, e)
        else:
            self._finish(r, None)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        _TASKS.discard(task)
        if task.cancelled():
            self._finish(None, asyncio.CancelledError())
        else:
            self._finish(task.result() if task.exception() is None else None, task.exception())


def go(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Handle[Any]:
    """Run ``fn(*args, **kwargs)`` concurrently and return its :class:`Handle`.

    Coroutine functions (or a coroutine object) run as a task on the running loop, or on a
    fresh loop in a new thread when called outside any loop; everything else on a new thread.
    """
    h: Handle[Any] = Handle()
    loop = _get_running_loop()
    if loop is not None and (inspect.iscoroutinefunction(fn) or inspect.iscoroutine(fn)):
        coro = fn(*args, **kwargs) if inspect.iscoroutinefunction(fn) else fn
        task = loop.create_task(coro)
        _TASKS.add(task)
        h.task = task
        task.add_done_callback(h._task_done)
        return h
    if inspect.iscoroutine(fn):
        coro_obj = fn
        fn, args, kwargs = (lambda: coro_obj), (), {}
    t = threading.Thread(
        target=h._run_thread,
        args=(contextvars.copy_context(), fn, args, kwargs),
        name=f"go:{getattr(fn, '__qualname__', 'fn')}",
        daemon=True,
    )
    h.thread = t
    t.start()
    return h
