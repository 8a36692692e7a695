"""``WaitGroup`` and ``ErrGroup``: wait for a set of concurrent calls, from threads or tasks.

Both are built on channels (a WaitGroup's zero state is a closed channel, an ErrGroup's
limit is a buffered channel used as a semaphore), so they wait equally well in a thread
or in a coroutine, and across loops.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import Any

from offload.chan._timeout import timeout as _check_timeout
from offload.chan.chan import Chan
from offload.chan.context import CancelFunc, Context, with_cancel
from offload.chan.errors import ChanPanic, WouldBlock
from offload.chan.go import go

__all__ = ["ErrGroup", "WaitGroup"]


def _closed_chan() -> Chan[Any]:
    ch: Chan[Any] = Chan()
    ch.close()
    return ch


class WaitGroup:
    """Counts outstanding work; ``wait`` returns when the count is back to zero."""

    __slots__ = ("_lock", "_n", "_zero")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0
        self._zero = _closed_chan()  # closed exactly while the counter is zero

    def add(self, n: int = 1) -> None:
        """Add ``n`` (may be negative); below zero raises ChanPanic and changes nothing."""
        with self._lock:
            new = self._n + n
            if new < 0:
                raise ChanPanic("sync: negative WaitGroup counter")
            if self._n == 0 and new > 0:
                self._zero = Chan()
            elif new == 0 and self._n > 0:
                self._zero.close()
            self._n = new

    def done(self) -> None:
        """One unit of work finished: ``add(-1)``."""
        self.add(-1)

    def count(self) -> int:
        """The current counter (a snapshot, for logging and tests)."""
        return self._n

    def wait(self, timeout: float | None = None) -> None:
        """Block until the counter is zero; TimeoutError after ``timeout`` seconds."""
        if timeout is not None:
            timeout = _check_timeout(timeout, "WaitGroup.wait(timeout=...)")
        with self._lock:
            zero = self._zero
        zero.recv_ok(timeout)

    async def async_wait(self) -> None:
        """Await the counter reaching zero."""
        with self._lock:
            zero = self._zero
        await zero.async_recv_ok()


class ErrGroup:
    """Go's ``errgroup.Group``: run calls concurrently; the first error wins and cancels.

    ``wait()`` waits for every call, then raises the first exception any of them raised.
    With :meth:`with_context`, that first error (or ``wait`` returning) cancels the group's
    context, which the calls should watch. A cancelled member task is not an error.
    """

    __slots__ = ("_cancel", "_err", "_lock", "_sem", "_wg")

    def __init__(self) -> None:
        self._wg = WaitGroup()
        self._lock = threading.Lock()
        self._err: BaseException | None = None
        self._cancel: CancelFunc | None = None
        self._sem: Chan[Any] | None = None

    @classmethod
    def with_context(cls, parent: Context) -> tuple[ErrGroup, Context]:
        """A group and a child of ``parent`` cancelled by the group's first error."""
        g = cls()
        ctx, g._cancel = with_cancel(parent)
        return g, ctx

    def set_limit(self, n: int) -> None:
        """At most ``n`` calls run at once (negative: no limit); only while the group is idle."""
        if self._wg.count() != 0:
            raise ChanPanic(
                f"errgroup: modify limit while {self._wg.count()} goroutines are still active"
            )
        self._sem = None if n < 0 else Chan(n)

    def go(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Start ``fn`` in the group; with a limit, a thread caller blocks until a slot frees.

        Called from a running loop, a coroutine function's task waits for its slot itself,
        so the loop never blocks.
        """
        sem = self._sem
        if sem is not None:
            if inspect.iscoroutinefunction(fn) and _get_running_loop() is not None:
                self._wg.add(1)
                go(self._run_async, fn, args, kwargs, True)
                return
            sem.send(None)
        self._wg.add(1)
        self._start(fn, args, kwargs, False)

    def try_go(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> bool:
        """Start ``fn`` only if a slot is free now; False (nothing started) otherwise."""
        sem = self._sem
        if sem is not None:
            try:
                sem.send_nowait(None)
            except WouldBlock:
                return False
        self._wg.add(1)
        self._start(fn, args, kwargs, False)
        return True

    def _start(self, fn: Callable[..., Any], args: Any, kwargs: Any, acquire: bool) -> None:
        if inspect.iscoroutinefunction(fn) and _get_running_loop() is not None:
            go(self._run_async, fn, args, kwargs, acquire)
        else:
            go(self._run_sync, fn, args, kwargs)

    def _run_sync(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            r = fn(*args, **kwargs)
            if inspect.iscoroutine(r):
                asyncio.run(r)
        except Exception as e:
            self._fail(e)
        finally:
            self._release()

    async def _run_async(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, acquire: bool
    ) -> None:
        try:
            if acquire:
                await self._sem.async_send(None)  # type: ignore[union-attr]
        except BaseException:
            self._wg.done()
            raise
        try:
            await fn(*args, **kwargs)
        except Exception as e:
            self._fail(e)
        finally:
            self._release()

    def _fail(self, exc: Exception) -> None:
        with self._lock:
            first = self._err is None
            if first:
                self._err = exc
        if first and self._cancel is not None:
            self._cancel()

    def _release(self) -> None:
        if self._sem is not None:
            self._sem.recv_nowait()
        self._wg.done()

    def wait(self, timeout: float | None = None) -> None:
        """Block until every call finished; raise the first error (cancels the context).

        TimeoutError after ``timeout`` seconds, with the calls still running.
        """
        if timeout is not None:
            timeout = _check_timeout(timeout, "ErrGroup.wait(timeout=...)")
        self._wg.wait(timeout)
        self._done()

    async def async_wait(self) -> None:
        """Await every call; raise the first error (cancels the context)."""
        await self._wg.async_wait()
        self._done()

    def _done(self) -> None:
        if self._cancel is not None:
            self._cancel()
        if self._err is not None:
            raise self._err
