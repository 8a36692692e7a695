"""What a worker owes its broker: acks, and the verdicts (retry, dead letter) of failed
tasks. Acks are batched; verdicts go out first, in order. While the broker is unreachable
everything is kept and sent again later: an ack that arrives after its lease expired is
ignored by the broker, so sending again is always safe."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..brokers.base import Broker, Lease
from ..errors import BrokerError

__all__ = ["Outbox"]

log = logging.getLogger("offload.worker")

ACK_BATCH = 500  # an ack batch this large is flushed without waiting for the loop


class Outbox:
    """Pending acks and verdicts, flushed by one owner (the worker's flusher job)."""

    def __init__(self) -> None:
        self.acks: list[Lease] = []
        # factories rather than coroutines, so a failed send can be made again
        self.verdicts: list[Callable[[], Awaitable[object]]] = []
        self.wanted = asyncio.Event()
        self._lock = asyncio.Lock()

    def ack(self, lease: Lease) -> None:
        self.acks.append(lease)
        if len(self.acks) == 1 or len(self.acks) >= ACK_BATCH:
            self.wanted.set()

    def verdict(self, send: Callable[[], Awaitable[object]]) -> None:
        self.verdicts.append(send)
        self.wanted.set()

    async def flush(self, broker: Broker) -> bool:
        """Send everything pending; False (keeping what failed) if the broker is away."""
        async with self._lock:  # the flusher and a burst worker's check may race
            while self.verdicts:
                try:
                    await self.verdicts[0]()
                except BrokerError as exc:
                    log.debug("verdict not recorded yet: %s", exc)
                    return False
                self.verdicts.pop(0)
            while self.acks:
                batch, self.acks = self.acks, []
                try:
                    await broker.ack(batch)
                except BrokerError as exc:
                    self.acks = batch + self.acks
                    log.debug("ack of %d tasks not recorded yet: %s", len(batch), exc)
                    return False
            return True
