"""Heartbeats: a running task's lease is extended every lease/3 seconds, in one broker call
for all of them, so a handler may run far longer than its lease without another worker
taking the task; a lease found lost cancels the handler's context.

"lease" is what the broker applied, as its claim and each renewal report it, never this
worker's copy of the policy: a deploy that lowers a queue's lease redeclares it, the broker
renews by the new length at once, and beats timed from the old one would come too late."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..brokers.base import Broker
from ..errors import BrokerError
from .state import Running

__all__ = ["heartbeat"]

log = logging.getLogger("offload.worker")


async def heartbeat(
    broker: Broker,
    running: dict[str, Running],
    closed: asyncio.Event,
    idle_period: float,
    on_outage: Callable[[BrokerError], Any],
) -> None:
    """Extend the leases of ``running`` until ``closed`` is set, every third of the
    shortest lease among them (``idle_period`` while none runs). A broker outage goes to
    ``on_outage`` (logged once per outage there) and the next beat tries again; leases are
    long enough to ride out a few missed beats."""
    last = time.monotonic()
    while not closed.is_set():
        # Re-read every half second at most: a task claimed meanwhile may carry a
        # shorter lease than those running when this wait began.
        lengths = [r.lease_length for r in running.values() if not r.lost]
        period = max(0.02, min(lengths) / 3) if lengths else idle_period
        wait = last + period - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), min(wait, 0.5))
            continue
        last = sent = time.monotonic()
        runs = [r for r in running.values() if not r.lost]
        if not runs:
            continue
        try:
            held = await broker.extend([r.claim.lease for r in runs])
        except BrokerError as exc:
            on_outage(exc)
            continue
        except Exception:
            log.exception("heartbeat failed; trying again at the next beat")
            continue
        for r, length in zip(runs, held, strict=True):
            if length is True:  # a broker that reports only "still held"
                r.lease_end = sent + r.lease_length
            elif length:
                r.lease_length = float(length)
                r.lease_end = sent + r.lease_length
            elif not r.lost:
                r.lost = True
                log.warning(
                    "lost the lease of task %s (%s): another worker may run it now; its "
                    "context is cancelled",
                    r.claim.id,
                    r.task.name if r.task else "?",
                )
                if r.info is not None:
                    r.info.cancel()
