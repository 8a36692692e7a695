"""Driving a coroutine step by step, summing the time of its steps, from its start or
from where a first step that already ran elsewhere left it.

The worker drives every async handler through it (the time an async task held the loop is
its CPU figure); the PostgreSQL broker runs a pool return's first step in its caller and
finishes it in a task a cancel cannot reach."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["FRESH", "Resumed"]

FRESH: Any = object()  # ``first`` of a coroutine that has not run yet


class Resumed:
    """Drives a coroutine, from its start (``first`` is :data:`FRESH`) or after a first
    step that already ran and yielded ``first`` (so the Task waits on the same futures),
    yielding what it yields and summing the time of its steps in ``cpu``."""

    __slots__ = ("_coro", "_first", "cpu")

    def __init__(self, coro: Any, first: Any = FRESH, cpu: float = 0.0) -> None:
        self._coro, self._first, self.cpu = coro, first, cpu

    def __await__(self) -> Any:
        # A step runs without waiting (it ends where the handler awaits), so its wall time
        # is the CPU time it held the loop; perf_counter costs a tenth of thread_time (a
        # system call on many machines), and a handler takes a few steps per task.
        coro, tt = self._coro, time.perf_counter
        step, arg = coro.send, None
        if self._first is not FRESH:
            try:
                value = yield self._first
            except BaseException as exc:  # cancellation and throw() go to the coroutine
                step, arg = coro.throw, exc
            else:
                arg = value
        while True:
            t0 = tt()
            try:
                y = step(arg)
            except StopIteration as stop:
                return stop.value
            finally:
                self.cpu += tt() - t0
            try:
                value = yield y
            except BaseException as exc:  # cancellation and throw() go to the coroutine
                step, arg = coro.throw, exc
            else:
                step, arg = coro.send, value
