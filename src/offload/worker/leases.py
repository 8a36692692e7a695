"""Heartbeats: a running task's lease is extended every lease/3 seconds, in one broker call
for all of them, so a handler may run far longer than its lease without another worker
taking the task; a lease found lost cancels the handler's context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
    period: float,
    on_outage: Callable[[BrokerError], Any],
) -> None:
    """Extend the leases of ``running`` every ``period`` seconds until ``closed`` is set.
    A broker outage goes to ``on_outage`` (logged once per outage there) and the next beat
    tries again; leases are long enough to ride out a few missed beats."""
    while not closed.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closed.wait(), period)
        if closed.is_set():
            return
        runs = [r for r in running.values() if not r.lost]
        if not runs:
            continue
        try:
            held = await broker.extend([r.claim.lease for r in runs])
        except BrokerError as exc:
            on_outage(exc)
            continue
        for r, ok in zip(runs, held, strict=True):
            if not ok and not r.lost:
                r.lost = True
                log.warning(
                    "lost the lease of task %s (%s); its result will be discarded",
                    r.claim.id,
                    r.task.name if r.task else "?",
                )
                if r.info is not None:
                    r.info.cancel()
