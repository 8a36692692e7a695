"""Running a worker's event loop to the end without waiting forever for what will not end.

``asyncio.run`` cancels every task still running when its main coroutine returns, then
waits for all of them. An async handler that swallows its cancellation (``except
CancelledError: pass`` in a loop) outlives its timeout, its slot and its verdict; under
``asyncio.run`` it then kept the process from ever exiting, and a deploy waited for its
kill timeout. :func:`run` waits for such leftovers only ``LEFTOVER_WAIT`` seconds, says how
many it left behind, and closes the loop anyway.

The loop itself is uvloop's when uvloop is installed (``loop="auto"``, the choice uvicorn
makes for the HTTP face too): the same worker then drained a backlog of ``async def`` tasks
that each make one Redis call a third faster on Redis, a sixth on SQLite and no faster on
PostgreSQL, and no-op tasks within a tenth either way (docs/benchmarks.md). ``asyncio``
asks for the standard library's loop whatever is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["LEFTOVER_WAIT", "LOOPS", "new_loop", "run"]

log = logging.getLogger("offload.worker")

T = TypeVar("T")
LEFTOVER_WAIT = 2.0  # seconds cancelled leftovers get to end before the loop closes
LOOPS = ("auto", "asyncio", "uvloop")  # what ``offload worker --loop`` accepts


def new_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` (one of :data:`LOOPS`): ``auto`` is uvloop's when it is
    installed, else the standard library's."""
    if kind not in LOOPS:
        raise ConfigError(
            f"event loop {kind!r} is not one offload knows; use one of {', '.join(LOOPS)}"
        )
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ConfigError(
                    "the uvloop event loop was asked for but uvloop is not installed: "
                    "pip install uvloop (the redis and postgres extras include it), or "
                    "use the standard library's loop (--loop asyncio)"
                ) from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(
    main: Coroutine[Any, Any, T], leftover_wait: float = LEFTOVER_WAIT, loop: str = "auto"
) -> T:
    """``asyncio.run(main)`` on a loop of kind ``loop`` (:func:`new_loop`), but tasks left
    running when ``main`` returns get ``leftover_wait`` seconds after their cancellation,
    and no more (``asyncio.Runner`` would wait for them at its close, so the loop is run by
    hand)."""
    try:
        loop_ = new_loop(loop)
    except BaseException:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    return _run(main, loop_, leftover_wait)


def _run(main: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop, leftover_wait: float) -> T:
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _end_leftovers(loop, leftover_wait)
            loop.run_until_complete(loop.shutdown_asyncgens())
            with contextlib.suppress(TimeoutError):
                loop.run_until_complete(
                    asyncio.wait_for(loop.shutdown_default_executor(), leftover_wait)
                )
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _end_leftovers(loop: asyncio.AbstractEventLoop, wait: float) -> None:
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not left:
        return
    for t in left:
        t.cancel()
    _, pending = loop.run_until_complete(asyncio.wait(left, timeout=wait))
    for t in left:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("a leftover task ended with %r", t.exception())
    if pending:
        log.warning(
            "%d task(s) still running %gs after they were cancelled (an async handler that "
            "swallows CancelledError?); the event loop closes without them",
            len(pending),
            wait,
        )
        for t in pending:
            # the loop closes with them pending: no "Task was destroyed" noise at exit
            t._log_destroy_pending = False  # type: ignore[attr-defined]
