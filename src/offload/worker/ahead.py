"""Claiming the next batch while the current one runs, for quick ``async def`` handlers.

Tasks claimed together start together, and when each does the same quick round trip they
finish together too: every slot frees within one turn of the loop. The worker then claims
again and, for the claim's round trip, has nothing to run. Measured on Redis (32 slots,
handlers doing one ``INCR``) that idle round trip came once per batch and left the worker
asleep about 15% of the time, however many slots it had and however soon it claimed.

So, while a backlog waits and the last tasks took little time, the worker claims one batch
ahead as soon as it has started one, and holds it. Freed slots take held tasks first, with
no round trip in between. What is held stays bounded:

* it is claimed only when the batch just started went to the loop alone (a batch with
  plain functions starts the lanes, which claim from the handler threads instead), no
  served queue has a rate or ``max_concurrent`` (a held task would hold a token or a slot
  other workers could use), and tasks lately took at most ``AHEAD_WALL`` seconds each on
  average (their wall time, waits for the loop included: every slot frees within about
  that, so a held batch starts well inside ``HOLD_MAX``; at 5 ms, 64 slots of a loop
  that spent 150 µs per task, 10 ms each, stopped claiming ahead, and a PostgreSQL
  worker lost a quarter of its rate to idle claims);
* at most ``concurrency`` tasks are held, and a held task starts within ``HOLD_MAX``
  seconds of its claim or goes back to the queue uncounted (as a drain's do), so a task
  claimed is still a task started within a bounded time;
* a drain gives back what is held, at once and uncounted.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING

from ..brokers.base import Claimed
from ..errors import BrokerError

if TYPE_CHECKING:
    from .runtime import Worker

__all__ = ["AheadRunner"]

AHEAD_WALL = 0.02  # seconds: the average task time under which the worker claims ahead
HOLD_MAX = 0.05  # seconds a held task may wait for a slot before it is given back
WALL_WEIGHT = 1 / 32  # of the latest task in the moving average of task times


class AheadRunner:
    """The claim-ahead half of :class:`~offload.worker.runtime.Worker` (a mixin)."""

    def _ahead_init(self: Worker) -> None:
        policies = [self._core.policy(q) for q in self.queues]
        #: whether this worker may claim ahead at all (see the module docstring)
        self._ahead_ok = all(p.rate is None and p.max_concurrent is None for p in policies)
        self._held: collections.deque[tuple[Claimed, float]] = collections.deque()
        self._wall_avg = 1.0  # seconds, a moving average of task times; starts high

    def _ahead_wanted(self: Worker, backlog: bool) -> bool:
        return (
            backlog
            and self._ahead_ok
            and not self._held
            and not self._stopping
            and not self._fed_threads
            and self._wall_avg <= AHEAD_WALL
        )

    async def _claim_ahead(self: Worker, ask: int) -> bool:
        """Claim the next batch of up to ``ask`` and hold it; whether it was as big as
        asked (a backlog)."""
        try:
            claimed = await self._broker.claim(self.queues, ask)  # type: ignore[union-attr]
        except BrokerError:
            return False  # the next plain claim meets the outage and waits it out
        self.stats.claimed += len(claimed)
        self.stats.claimed_ahead += len(claimed)
        at = time.monotonic()
        self._held.extend((c, at) for c in claimed)
        return len(claimed) >= ask

    def _start_held(self: Worker, free: int) -> None:
        """Start held tasks in ``free`` slots (a batch is held from one claim: one age)."""
        held = self._held
        now = time.monotonic()
        while held and free > 0:
            c, at = held.popleft()
            self._start(c)
            run = self._running.get(c.id)
            if run is not None:
                run.lease_end -= now - at  # its lease ran from the claim
            free -= 1

    def _held_wait(self: Worker) -> float:
        """Seconds until the held tasks must be given back (0: now)."""
        return max(0.0, self._held[0][1] + HOLD_MAX - time.monotonic()) if self._held else 0.0

    def _give_back_held(self: Worker) -> None:
        """Back to the queue, uncounted (they never ran): a drain, or held too long."""
        while self._held:
            c, _ = self._held.popleft()
            self._outbox.release(c.lease, 0.0)
            self.stats.released += 1
