"""One Redis broker's side of hand-offs (``notify_parked`` in ``lua/_lib.lua``).

Before an idle worker blocks, it *parks* on its queues under its worker id. An enqueue of
a task due now then leases the task to it and pushes it to the worker's inbox, which the
worker's ``BLPOP`` reads. :class:`Parking` keeps what the broker must remember between those
steps: the id, the queues it is parked on (the next claim unparks it there and takes back
anything handed to it meanwhile), the tasks handed to it that no claim has returned yet,
and the worker's ``on_handoff`` callback, which starts them where the wait read them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .base import Claimed
from .redis_lua import QueueKeys, handed_from

__all__ = ["Parking"]


class Parking:
    """Hand-off bookkeeping for one broker (one worker's event loop)."""

    def __init__(self, cluster: bool) -> None:
        # '~': wake-only, a cluster worker (a cancelled BLPOP there may drop a hand-off)
        self.wid = ("~" if cluster else "") + os.urandom(8).hex()
        #: the queues this worker may be parked on: the next claim unparks it there
        self.queues: set[str] = set()
        #: tasks handed to this worker that no claim has returned yet
        self.handed: list[Claimed] = []
        self.on_handoff: Callable[[list[Claimed]], bool] | None = None
        self._inbox_queue: dict[str, str] = {}

    def park(self, queues: Sequence[str], ttl: float) -> tuple[tuple[Any, ...], set[str]]:
        """The peek script's arguments that park this worker for ``ttl`` seconds, and the
        queues it was parked on before. The queues count as parked from now: if the call
        is cancelled, the script may still have run, and the next claim must unpark."""
        before = set(self.queues)
        self.queues.update(queues)
        return (self.wid, int(ttl * 1e6)), before

    def peeked(self, queues: Sequence[str], delays: Sequence[int], before: set[str]) -> None:
        """After the park: a queue with something claimable now was not parked on."""
        for q, d in zip(queues, delays, strict=True):
            if d == 0 and q not in before:
                self.queues.discard(q)

    def inboxes(self, keys_of: Callable[[str], QueueKeys]) -> list[str]:
        """The inbox keys to block on, one per parked queue."""
        out = []
        for q in self.queues:
            key = keys_of(q).inbox(self.wid)
            self._inbox_queue[key] = q
            out.append(key)
        return out

    def take(self, popped: tuple[bytes, bytes]) -> bool:
        """Take a hand-off a BLPOP read (False: it read a wake-up token). The enqueue that
        made it unparked us from its queue. The worker starts the tasks now if it can;
        otherwise, or while parked elsewhere (the claim that unparks us there must come
        first), the next claim returns them."""
        queue = self._inbox_queue.get(popped[0].decode())
        if queue is None:
            return False
        got = handed_from(queue, popped[1])
        self.queues.discard(queue)
        sink = self.on_handoff
        if sink is None or self.queues or self.handed or not sink(got):
            self.handed += got
        return True

    def take_handed(self, limit: int) -> tuple[list[Claimed], bool]:
        """Up to ``limit`` handed tasks for a claim, and whether the claim still needs a
        round trip (to unpark, or for more tasks)."""
        got, self.handed = self.handed[:limit], self.handed[limit:]
        return got, bool(self.queues) or not got

    def claim_args(self, queue: str, limit: int) -> tuple[Any, ...]:
        """claim.lua's arguments: with the worker id where it must unpark too."""
        return (limit, self.wid) if queue in self.queues else (limit,)

    def unpark_only(self, queues: Iterable[str]) -> list[tuple[str, tuple[Any, ...]]]:
        """Claims of nothing (limit 0) that unpark us from parked queues not in
        ``queues``, giving back anything handed to us there."""
        asked = set(queues)
        return [(q, (0, self.wid)) for q in sorted(self.queues - asked)]
