"""Fixtures for the chan suite: one test body, run on threads, on asyncio tasks, and mixed.

A "goroutine" is written once as ``async def body(go: Ops, ...)`` and calls
``await go.send(ch, v)``, ``await go.recv(ch)``, ``await go.select(...)``. On a thread the
coroutine is driven by hand and the ops call the blocking forms (it never suspends); on a
task they await the async forms. The ``runner`` fixture spawns goroutines in its mode
(``mixed`` alternates thread and task) and fails the test if any is left running.

An autouse fixture records every channel a test creates and fails the test if any still
has a waiter queued at the end: no operation may leave a trace behind.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from offload.chan import Chan, async_select, select
from offload.chan.chan import _Sudog

MODES = ["thread", "asyncio", "mixed"]


def drive(coro: Any) -> Any:
    """Run a coroutine that never suspends (thread-mode ops) to completion on this thread."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("a thread-mode goroutine tried to suspend on an event loop")


class Ops:
    """The channel API one goroutine sees; ``thread`` or ``async`` flavoured."""

    def __init__(self, rt: Runtime, threaded: bool) -> None:
        self.rt = rt
        self.threaded = threaded

    async def send(self, ch: Chan[Any], v: Any) -> None:
        if self.threaded:
            ch.send(v)
        else:
            await ch.async_send(v)

    async def recv(self, ch: Chan[Any]) -> Any:
        if self.threaded:
            return ch.recv()
        return await ch.async_recv()

    async def recv_ok(self, ch: Chan[Any]) -> tuple[Any, bool]:
        if self.threaded:
            return ch.recv_ok()
        return await ch.async_recv_ok()

    async def select(self, *cases: Any, **kw: Any) -> tuple[int, Any, bool]:
        if self.threaded:
            return select(*cases, **kw)
        return await async_select(*cases, **kw)

    async def range(self, ch: Chan[Any]) -> list[Any]:
        out = []
        while True:
            v, ok = await self.recv_ok(ch)
            if not ok:
                return out
            out.append(v)

    async def sleep(self, s: float) -> None:
        if self.threaded:
            time.sleep(s)
        else:
            await asyncio.sleep(s)

    async def yield_(self) -> None:
        await self.sleep(0)

    def go(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self.rt.spawn(fn, *args)


class Runtime:
    def __init__(self, mode: str, loop: asyncio.AbstractEventLoop) -> None:
        self.mode = mode
        self.loop = loop
        self._n = 0
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.futures: list[Any] = []
        self.errors: list[BaseException] = []

    def _threaded_next(self) -> bool:
        if self.mode == "thread":
            return True
        if self.mode == "asyncio":
            return False
        with self._lock:
            self._n += 1
            return self._n % 2 == 1

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        threaded = self._threaded_next()
        ops = Ops(self, threaded)
        if threaded:

            def run() -> None:
                try:
                    drive(fn(ops, *args))
                except BaseException as e:
                    self.errors.append(e)

            t = threading.Thread(target=run, daemon=True)
            with self._lock:
                self.threads.append(t)
            t.start()
            return
        coro = fn(ops, *args)
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            on_loop = False
        fut = (
            self.loop.create_task(coro)
            if on_loop
            else asyncio.run_coroutine_threadsafe(coro, self.loop)
        )
        with self._lock:
            self.futures.append(fut)

    async def run(
        self, main: Callable[..., Awaitable[Any]], *args: Any, timeout: float = 20
    ) -> Any:
        """Run ``main`` as a goroutine of this mode (mixed: on a thread) and wait for all."""
        threaded = self.mode != "asyncio"
        ops = Ops(self, threaded)
        deadline = time.monotonic() + timeout
        if threaded:
            result = await asyncio.wait_for(asyncio.to_thread(drive, main(ops, *args)), timeout)
        else:
            result = await asyncio.wait_for(main(ops, *args), timeout)
        await self.join(deadline)
        return result

    async def join(self, deadline: float) -> None:
        while True:
            with self._lock:
                threads = [t for t in self.threads if t.is_alive()]
                futs = [f for f in self.futures if not f.done()]
            if not threads and not futs:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(threads)} threads, {len(futs)} tasks still running")
            await asyncio.sleep(0.002)
        for f in self.futures:
            exc = f.exception()
            if exc is not None:
                raise exc
        if self.errors:
            raise self.errors[0]


@pytest.fixture(params=MODES)
async def runner(request: pytest.FixtureRequest) -> Runtime:
    return Runtime(request.param, asyncio.get_running_loop())


@pytest.fixture(autouse=True)
def no_waiters_left(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Fail a test that leaves any waiter queued on any channel it created."""
    created: weakref.WeakSet[Chan[Any]] = weakref.WeakSet()
    orig = Chan.__init__

    def init(self: Chan[Any], cap: int = 0) -> None:
        orig(self, cap)
        created.add(self)

    monkeypatch.setattr(Chan, "__init__", init)
    yield created
    # Woken selects remove their other entries right after waking: allow them a moment.
    deadline = time.monotonic() + 2.0
    while True:
        left = {repr(c): c._debug_waiters() for c in list(created) if c._debug_waiters() != (0, 0)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    assert not left, f"waiters left behind: {left}"


def queued(ch: Chan[Any]) -> int:
    return sum(ch._debug_waiters())


__all__ = ["MODES", "Ops", "Runtime", "_Sudog", "drive", "queued"]
