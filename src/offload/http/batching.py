"""Task creations that arrive together reach the broker together.

Each ``POST /api/v1/tasks`` (and each Cloud Tasks ``tasks.create``) used to be one broker
call; under many concurrent clients the server spent most of its time on the per-call cost
of the broker client (one script call, one round trip, a hop to the broker's thread), not
on the task. A :class:`Batcher` keeps at most one call in flight per event loop: a
creation arriving while one is in flight waits for it to finish and then goes, with every
other creation that arrived meanwhile, in the next single call (the brokers take lists).
A lone request is sent at once: nothing waits for a window to fill.

Each request still gets its own answer: the call returns one result per item (for
``Broker.enqueue``, False: the name exists or is inside its dedup window: the request's
409), and two creations with the same name in one batch are decided as two sends would be
(the first one wins). When the call fails (the broker is down), every request of that
batch gets the error (its 503): nothing of the batch was stored, as a batch is stored
whole or not at all.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ..brokers.base import Broker, NewTask

__all__ = ["MAX_BATCH", "Batcher", "BrokerClock", "EnqueueBatcher"]

#: the most creations one broker call carries
MAX_BATCH = 256

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """One per event loop and purpose (kept in :class:`HttpContext`'s ``extras``).
    ``call`` takes the waiting items in arrival order and returns one result per item."""

    def __init__(
        self, call: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = MAX_BATCH
    ) -> None:
        self._call = call
        self._max = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """``item``'s result, from one call shared with whatever else is waiting."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
                try:
                    results = await self._call([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its request may have gone (a disconnect)
                        future.set_result(result)
        finally:
            self._drainer = None
            for _, future in self._waiting:  # only on cancellation (shutdown)
                future.cancel()
            self._waiting = []


class EnqueueBatcher(Batcher[NewTask, bool]):
    """The JSON API's: ``call`` is the App's ``registry.enqueue_async``; True when the task
    was created."""


class BrokerClock:
    """The broker's clock as this process reads it, to stamp a batch's answers (Cloud
    Tasks' ``createTime``): its own clock plus the offset one ``now()`` measured (again
    every :attr:`EVERY` seconds), so a batch makes no call for it (on a busy server the
    socket write of a call costs more than the tasks). Off by at most the measuring call's
    round trip; what the broker stores is stamped by the broker itself."""

    EVERY = 10.0

    def __init__(self) -> None:
        self.offset = 0.0
        self.measured_at = -math.inf

    async def now(self, b: Broker) -> float:
        t0 = time.time()
        if t0 - self.measured_at >= self.EVERY:
            there = await b.now()
            t1 = time.time()
            self.offset, self.measured_at = there - (t0 + t1) / 2, t1
            return there
        return t0 + self.offset
