"""The retry policies a worker judges failures by: its App's declarations, except where an
operator stored a retry override in the broker (:mod:`offload.brokers.overrides`, set
through the Cloud Tasks surface's ``retryConfig``), which wins over every App's
declaration until it is changed or cleared the same way.

The worker reads the overrides of the queues it serves when it starts, before its first
claim, and again every :data:`REFRESH` seconds, so a change reaches every worker within
that time, without a restart; a task already judged keeps its verdict. Only ``retry`` is
replaced: lease, timeout and the rest stay the App's. While the broker is unreachable the
worker keeps the policies it last read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from ..brokers.base import Broker
from ..brokers.overrides import RetryOverrides
from ..core.policy import QueuePolicy, RetryPolicy
from ..errors import BrokerError

__all__ = ["REFRESH", "StoredRetry", "declare"]

log = logging.getLogger("offload.worker")

#: seconds between two reads of the stored retry overrides
REFRESH = 5.0


class StoredRetry:
    """Keeps ``policies`` (the worker's own dict, queue -> policy, read where failures are
    judged) in step with the broker's retry overrides, changing it in place."""

    def __init__(self, policies: dict[str, QueuePolicy]) -> None:
        self._policies = policies
        self._declared = dict(policies)
        self._applied: dict[str, RetryPolicy] = {}

    async def refresh(self, broker: Broker) -> None:
        """Read the overrides once and apply them. Raises BrokerError when unreachable."""
        if not isinstance(broker, RetryOverrides):
            return
        stored = await broker.retry_overrides(list(self._declared))
        for q, declared in self._declared.items():
            retry = stored.get(q)
            if retry == self._applied.get(q):
                continue
            if retry is None:
                log.info("queue %r: retry override cleared; its declaration applies", q)
                del self._applied[q]
                self._policies[q] = declared
                continue
            if retry != declared.retry:
                log.warning(
                    "queue %r: the retry policy stored in the broker (%s) overrides this "
                    "App's declaration (%s)",
                    q,
                    retry,
                    declared.retry,
                )
            self._applied[q] = retry
            self._policies[q] = dataclasses.replace(declared, retry=retry)

    async def keep(self, broker: Broker, closed: asyncio.Event, every: float = REFRESH) -> None:
        """Refresh every ``every`` seconds until ``closed`` is set (a background job of the
        worker's task group; it ends by that flag, never by cancellation)."""
        if not isinstance(broker, RetryOverrides):
            return
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), every)
            if closed.is_set():
                return
            with contextlib.suppress(BrokerError):  # an outage: the claim loop reports it
                await self.refresh(broker)


async def declare(core: Any, broker: Broker) -> None:
    """Declare this App's queues (the last declaration wins), saying so where that
    changes what the broker enforces: another App or an older deploy declared it
    differently, and its workers now run under this declaration."""
    policies = [core.policy(q) for q in sorted(core.queues)]
    for p in policies:
        try:
            stored = (await broker.stats(p.name)).policy
        except BrokerError:
            break  # the declaration below reports the outage
        if stored is None:
            continue
        mine = (p.rate, p.bucket, p.max_concurrent, p.lease, p.dedup_window)
        theirs = (
            stored.rate,
            stored.bucket,
            stored.max_concurrent,
            stored.lease,
            stored.dedup_window,
        )
        if any(not _same(a, b) for a, b in zip(mine, theirs, strict=True)):
            log.warning(
                "queue %r: this worker's declaration replaces the policy the broker "
                "enforced (rate, bucket, max_concurrent, lease, dedup_window: %s -> %s)",
                p.name,
                theirs,
                mine,
            )
    await broker.declare(policies)


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-9 * max(1.0, abs(a))
