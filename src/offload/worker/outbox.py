"""What a worker owes its broker: acks, releases, and the verdicts (retry, dead letter) of
failed tasks. Acks are batched; verdicts go out first, up to ``VERDICT_BATCH`` at once
(each concerns its own task), so that a result a caller waits for is stored before its
task's ack.

An outage (:class:`~offload.errors.BrokerUnavailable`) keeps everything to send again
later: an ack that arrives late still counts (a finished run wins), and a verdict for a lost
lease is ignored by the broker, so sending again is always safe. A *refused* request
(:class:`~offload.errors.BrokerRefused`, or any other error: a broker bug must not wedge the
worker) is permanent: the verdict is sent once more in a minimal form the broker can store,
and if that is refused too it is dropped and logged (its task runs again after its lease),
so one bad verdict never blocks the acks of unrelated tasks behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..brokers.base import Broker, Lease
from ..errors import BrokerUnavailable

__all__ = ["Outbox"]

log = logging.getLogger("offload.worker")

ACK_BATCH = 500  # an ack batch this large is flushed at once; the most acks sent per call
VERDICT_BATCH = 16  # verdicts sent at once (each is its own request, on its own connection)

Send = Callable[[], Awaitable[object]]


class Outbox:
    """Pending acks, releases and verdicts, flushed by one owner (the worker's flusher)."""

    def __init__(self) -> None:
        self.acks: list[Lease] = []
        # factories rather than coroutines, so a failed send can be made again:
        # (send, fallback when refused, task id for the log)
        self.verdicts: list[tuple[Send, Send | None, str]] = []
        self.releases: dict[float, list[Lease]] = {}
        self.wanted = asyncio.Event()
        self.refused = 0  # verdicts or acks the broker refused for good
        self._lock = asyncio.Lock()

    def ack(self, lease: Lease) -> None:
        self.acks.append(lease)
        if len(self.acks) == 1 or len(self.acks) >= ACK_BATCH:
            self.wanted.set()

    def verdict(self, send: Send, fallback: Send | None = None, task_id: str = "?") -> None:
        self.verdicts.append((send, fallback, task_id))
        self.wanted.set()

    def release(self, lease: Lease, delay: float = 0.0) -> None:
        self.releases.setdefault(delay, []).append(lease)
        self.wanted.set()

    def __len__(self) -> int:
        return len(self.acks) + len(self.verdicts) + sum(map(len, self.releases.values()))

    async def flush(self, broker: Broker) -> bool:
        """Send everything pending; False (keeping what failed) if the broker is away."""
        async with self._lock:  # the flusher and a burst worker's check may race
            while self.verdicts:
                # Each verdict concerns its own task (a call's result, a retry, a dead
                # letter, a move): a batch of them goes out at once, not one round trip
                # after another (32 callers waiting on async handlers' results did). What
                # an outage kept stays, in its order, for the next flush.
                batch = self.verdicts[:VERDICT_BATCH]
                sent = await asyncio.gather(*(self._send(*v) for v in batch))
                kept = [v for v, ok in zip(batch, sent, strict=True) if not ok]
                self.verdicts[: len(batch)] = kept  # later ones were appended meanwhile
                if kept:
                    return False
            while self.releases:
                # taken out before the round trip: a release of the same delay queued
                # meanwhile starts a list of its own (it was deleted with this one)
                delay = next(iter(self.releases))
                leases = self.releases.pop(delay)
                try:
                    await broker.release(leases, delay)
                except BrokerUnavailable as exc:
                    self.releases[delay] = leases + self.releases.get(delay, [])
                    log.debug("release of %d tasks not recorded yet: %s", len(leases), exc)
                    return False
                except Exception as exc:
                    self.refused += len(leases)
                    log.error("broker refused to release %d tasks: %s", len(leases), exc)
            while self.acks:
                # at most ACK_BATCH per call: acks piled up behind a slow verdict or an
                # outage must not make one call larger than the broker takes (a Lua
                # script's arguments are bounded), or all of them would be refused
                batch, self.acks = self.acks[:ACK_BATCH], self.acks[ACK_BATCH:]
                try:
                    await broker.ack(batch)
                except BrokerUnavailable as exc:
                    self.acks = batch + self.acks
                    log.debug("ack of %d tasks not recorded yet: %s", len(batch), exc)
                    return False
                except Exception as exc:
                    self.refused += len(batch)
                    log.error(
                        "broker refused an ack of %d tasks (they run again after their lease): %s",
                        len(batch),
                        exc,
                    )
            return True

    async def _send(self, send: Send, fallback: Send | None, task_id: str) -> bool:
        """One verdict: True when it is done with (stored, or refused for good), False when
        the broker is away (it stays queued)."""
        try:
            await send()
        except BrokerUnavailable as exc:
            log.debug("verdict not recorded yet: %s", exc)
            return False
        except Exception as exc:
            return await self._refused(send, fallback, task_id, exc)
        return True

    async def _refused(
        self, send: Send, fallback: Send | None, task_id: str, exc: Exception
    ) -> bool:
        """A verdict the broker refused. Try its fallback once; False on an outage."""
        if fallback is not None:
            log.warning(
                "task %s: the broker refused its verdict (%s); storing it without the "
                "error text it could not hold",
                task_id,
                exc,
            )
            try:
                await fallback()
                return True
            except BrokerUnavailable:
                return False
            except Exception as again:
                exc = again
        self.refused += 1
        log.error(
            "task %s: the broker refused its verdict for good (%s); it runs again after its lease",
            task_id,
            exc,
        )
        return True
