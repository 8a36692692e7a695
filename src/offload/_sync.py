"""The synchronous facade over the async broker core.

Brokers whose coroutines never suspend (``Capabilities.inline``: SQLite) are driven right
here on the caller's thread with ``coro.send(None)``: no event loop, no thread hop, so a web
request pays only for the database write. Other brokers run on a *portal*: one event loop in
a daemon thread, owned by the App, started on first use and stopped by ``App.close()``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["Portal", "run_inline"]


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must not suspend; raise if it tries to."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError(
        "an inline broker coroutine suspended; the broker must not declare "
        "Capabilities(inline=True)"
    )


class Portal:
    """An event loop on a daemon thread, for calling async code from sync code."""

    def __init__(self, name: str = "offload-portal") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the portal's loop and block for its result."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimeError("Portal.run called from the portal's own loop: await instead")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=5)
            if not loop.is_running():
                loop.close()
