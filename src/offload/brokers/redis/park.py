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
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..base import Claimed
from .scripts import QueueKeys, handed_from

__all__ = ["CLAIM_PARK_TTL", "PARK_MARGIN", "Parking"]

# A worker killed while parked receives hand-offs until its park ends (those tasks wait for
# their lease to run out; the claim that takes them over then does not count that lease as
# an attempt), so parks are kept short: the wait that follows a claim, plus a margin for
# the round trip between the park and the block.
#: how long a claim that found nothing parks its worker: its wait follows at once
CLAIM_PARK_TTL = 1.5
#: how much longer than its block a wait parks its worker
PARK_MARGIN = 0.25


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
        #: per queue, what the last claim said peek would (µs to claimable) and when
        self.pre: dict[str, tuple[int, float]] = {}
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

    def take(self, popped: tuple[bytes, bytes]) -> tuple[bool, list[Claimed]]:
        """Take a hand-off a BLPOP read: (False, []) when it read a wake-up token; else
        True and the tasks the worker refused, which the caller must release at once. The
        enqueue that made it unparked us from its queue. A worker (``on_handoff`` set)
        starts the tasks now or refuses them; for a plain consumer the next claim returns
        them."""
        queue = self._inbox_queue.get(popped[0].decode())
        if queue is None:
            return False, []
        got = handed_from(queue, popped[1])
        self.queues.discard(queue)
        sink = self.on_handoff
        if sink is None:
            self.handed += got
            return True, []
        return True, [] if sink(got) else got

    def take_handed(self, limit: int) -> tuple[list[Claimed], bool]:
        """Up to ``limit`` handed tasks for a claim, and whether the claim still needs a
        round trip (to unpark, or for more tasks)."""
        got, self.handed = self.handed[:limit], self.handed[limit:]
        return got, bool(self.queues) or not got

    def claim_args(self, queue: str, limit: int, park: bool = False) -> tuple[Any, ...]:
        """claim.lua's arguments: with the worker id where it must unpark too, and, for a
        worker that waits when the claim finds nothing (``park``), the id to park it under
        there and then."""
        wid = self.wid if queue in self.queues else ""
        if park:
            return (limit, wid, self.wid, int(CLAIM_PARK_TTL * 1e6))
        return (limit, wid) if wid else (limit,)

    def claimed(self, queue: str, delay: int | None) -> None:
        """After a claim of ``queue``: parked there again only if it found nothing and
        nothing was claimable (``delay`` from claim.lua, None when it did not park)."""
        if delay is None or delay == 0:
            self.queues.discard(queue)
        else:
            self.queues.add(queue)
            self.pre[queue] = (delay, time.monotonic())

    def parked_by_claim(self, queues: Sequence[str], timeout: float) -> list[int] | None:
        """The delays peek would give now, if the claim just before parked us on all of
        ``queues`` for long enough to cover a wait of ``timeout`` seconds; else None."""
        pre, self.pre = self.pre, {}
        now = time.monotonic()
        out = []
        for q in queues:
            got = pre.get(q)
            if got is None or q not in self.queues:
                return None
            delay, at = got
            if now - at + timeout + PARK_MARGIN > CLAIM_PARK_TTL:
                return None
            out.append(delay if delay < 0 else max(0, delay - int((now - at) * 1e6)))
        return out

    def unpark_only(self, queues: Iterable[str]) -> list[tuple[str, tuple[Any, ...]]]:
        """Claims of nothing (limit 0) that unpark us from parked queues not in
        ``queues``, giving back anything handed to us there."""
        asked = set(queues)
        return [(q, (0, self.wid)) for q in sorted(self.queues - asked)]
