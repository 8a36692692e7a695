"""Task creations that arrive together reach the broker together.

Each ``POST /api/v1/tasks`` used to be one broker call; under many concurrent clients the
server spent most of its time on the per-call cost of the broker client (one script call,
one round trip), not on the task. :class:`EnqueueBatcher` keeps at most one enqueue in
flight per event loop: a creation arriving while one is in flight waits for it to finish
and then goes, with every other creation that arrived meanwhile, in the next single
``Broker.enqueue`` call (the brokers take lists). A lone request is sent at once: nothing
waits for a window to fill.

Each request still gets its own answer: ``enqueue`` returns one flag per task (False: the
name exists or is inside its dedup window: the request's 409), and two creations with the
same name in one batch are decided as two sends would be (the first one wins). When the
call fails (the broker is down), every request of that batch gets the error (its 503):
nothing of the batch was stored, as a batch is stored whole or not at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ..brokers.base import NewTask

__all__ = ["MAX_BATCH", "EnqueueBatcher"]

#: the most creations one broker call carries
MAX_BATCH = 256


class EnqueueBatcher:
    """One per event loop (see :meth:`HttpContext`'s ``extras``); ``enqueue`` is the App's
    ``registry.enqueue_async``."""

    def __init__(
        self,
        enqueue: Callable[[Sequence[NewTask]], Awaitable[list[bool]]],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._enqueue = enqueue
        self._max = max_batch
        self._waiting: list[tuple[NewTask, asyncio.Future[bool]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, task: NewTask) -> bool:
        """Enqueue ``task`` with whatever else is waiting; True when it was created."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((task, future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                try:
                    created = await self._enqueue([task for task, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), ok in zip(batch, created, strict=True):
                    if not future.done():  # its request may have gone (a disconnect)
                        future.set_result(ok)
        finally:
            self._drainer = None
            for _, future in self._waiting:  # only on cancellation (shutdown)
                future.cancel()
            self._waiting = []
