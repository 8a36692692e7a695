"""Running a worker's event loop to the end without waiting forever for what will not end.

``asyncio.run`` cancels every task still running when its main coroutine returns, then
waits for all of them. An async handler that swallows its cancellation (``except
CancelledError: pass`` in a loop) outlives its timeout, its slot and its verdict; under
``asyncio.run`` it then kept the process from ever exiting, and a deploy waited for its
kill timeout. :func:`run` waits for such leftovers only ``LEFTOVER_WAIT`` seconds, says how
many it left behind, and closes the loop anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LEFTOVER_WAIT", "run"]

log = logging.getLogger("offload.worker")

T = TypeVar("T")
LEFTOVER_WAIT = 2.0  # seconds cancelled leftovers get to end before the loop closes


def run(main: Coroutine[Any, Any, T], leftover_wait: float = LEFTOVER_WAIT) -> T:
    """``asyncio.run(main)``, but tasks left running when ``main`` returns get
    ``leftover_wait`` seconds after their cancellation, and no more (``asyncio.Runner``
    would wait for them at its close, so the loop is run by hand)."""
    loop = asyncio.new_event_loop()
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
