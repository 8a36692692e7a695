"""The worker's side of periodic tasks (:mod:`offload.periodic`): one background job per
worker, in its task group, that enqueues each due slot of the schedules on its queues.

Every worker serving a schedule's queue does this; exactly one task per slot is created
because each slot's task is named after it (the broker refuses the others: not an error).
The last slot fired is kept in the broker's result store, so a worker that starts after
downtime fires only the latest missed slot, and one that starts on a schedule that never
fired waits for the next slot. Times are the broker's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from ..brokers.base import MAX_RESULT_TTL, Broker, ResultStore
from ..errors import BrokerError, OffloadError
from ..periodic import Schedule, marker_key, slot_name

if TYPE_CHECKING:
    from ..registry import Registry

__all__ = ["keep_schedules"]

log = logging.getLogger("offload.worker")

_MAX_NAP = 30.0  # seconds: look at the clock again at least this often
_OUTAGE_PAUSE = 1.0


async def keep_schedules(
    registry: Registry,
    queues: Sequence[str],
    broker: Broker,
    stop: asyncio.Event,
    closed: asyncio.Event,
) -> None:
    """Fire the due slots of the schedules on ``queues`` until ``stop`` or ``closed``."""
    schedules = [s for s in registry.schedules.values() if s.queue in queues]
    if not schedules:
        return
    if not isinstance(broker, ResultStore) or not broker.capabilities.results:
        log.error(
            "periodic tasks %s not kept: broker %s cannot store results, where the last "
            "slot fired is recorded",
            ", ".join(s.task for s in schedules),
            registry.broker_url,
        )
        return
    last: dict[str, float | None] = {}
    while not (stop.is_set() or closed.is_set()):
        try:
            now = await broker.now()
            for s in schedules:
                await _fire_due(registry, broker, s, now, last)
            nap = min(s.next_after(now) for s in schedules) - await broker.now()
        except BrokerError as exc:
            log.warning("periodic tasks: %s; trying again shortly", exc)
            nap = _OUTAGE_PAUSE
        except OffloadError as exc:  # a schedule that cannot be computed: say so, go on
            log.error("periodic tasks: %s", exc)
            nap = _MAX_NAP
        await _sleep(max(0.0, min(nap, _MAX_NAP)) + 0.001, stop, closed)


async def _fire_due(
    registry: Registry,
    broker: ResultStore,
    s: Schedule,
    now: float,
    last: dict[str, float | None],
) -> None:
    slot = s.latest(now)
    key = marker_key(registry.name, s.task)
    if s.task not in last:
        raw = await broker.get_result(key)
        last[s.task] = None if raw is None else float(msgspec.msgpack.decode(raw))
        if last[s.task] is None:  # never fired: start with the next slot, not the past
            last[s.task] = slot
            await broker.put_result(key, msgspec.msgpack.encode(slot), MAX_RESULT_TTL)
            return
    seen = last[s.task]
    if seen is not None and slot <= seen:
        return
    tf = registry.tasks.get(s.task)
    if tf is None:
        return
    new = tf.build((), None, name=slot_name(s.task, slot), queue=s.queue)
    created = await broker.enqueue([new])  # type: ignore[attr-defined]
    if created[0]:
        log.debug("periodic task %s fired for slot %s", s.task, slot)
    last[s.task] = slot
    await broker.put_result(key, msgspec.msgpack.encode(slot), MAX_RESULT_TTL)


async def _sleep(seconds: float, stop: asyncio.Event, closed: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(closed.wait())]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
