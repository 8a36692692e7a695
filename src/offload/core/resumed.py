"""Driving the rest of a coroutine whose first step already ran elsewhere.

The worker runs an async handler's first step itself and hands the rest to an
``asyncio.Task`` only if it suspends (an eager start); the PostgreSQL broker runs a pool
return's first step in its caller and finishes it in a task a cancel cannot reach.
``Resumed`` is that rest, in both."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Resumed"]


class Resumed:
    """Drives a coroutine whose first step already ran, yielding what it yielded (so the
    Task waits on the same futures) and summing the time of its own steps."""

    __slots__ = ("_coro", "_first", "cpu")

    def __init__(self, coro: Any, first: Any, cpu: float) -> None:
        self._coro, self._first, self.cpu = coro, first, cpu

    def __await__(self) -> Any:
        # A step runs without waiting (it ends where the handler awaits), so its wall time
        # is the CPU time it held the loop; perf_counter costs a tenth of thread_time (a
        # system call on many machines), and a handler takes a few steps per task.
        coro, tt = self._coro, time.perf_counter
        y = self._first
        while True:
            try:
                value = yield y
            except BaseException as exc:  # cancellation and throw() go to the handler
                step, arg = coro.throw, exc
            else:
                step, arg = coro.send, value
            t0 = tt()
            try:
                y = step(arg)
            except StopIteration as stop:
                return stop.value
            finally:
                self.cpu += tt() - t0
