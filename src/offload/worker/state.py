"""The worker's bookkeeping records: its counters and one entry per running task."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import envelope as _env

if TYPE_CHECKING:
    from ..brokers.base import Claimed
    from ..task import TaskFunction, TaskInfo

__all__ = ["Running", "WorkerStats"]

log = logging.getLogger("offload.worker")


@dataclass(slots=True)
class WorkerStats:
    """What this worker did since it started (also what ``--burst`` prints)."""

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0
    #: tasks of another app met on a shared queue, released for that app's workers
    foreign: int = 0
    #: handlers that did not stop after their timeout and were left behind (a thread that
    #: swallowed TaskTimeout or was stuck in C code; a coroutine that swallowed its cancel)
    abandoned: int = 0
    #: tasks claimed one batch ahead and held for the next free slots (quick async
    #: handlers with a backlog, see offload.worker.ahead); they count in ``claimed`` too
    claimed_ahead: int = 0
    #: claims made by handler threads themselves (lanes: a backlog of plain-function
    #: tasks, see offload.worker.lanes); their tasks count in ``claimed`` too
    lane_claims: int = 0
    #: of those, claims made while at most ``_lane_ahead`` jobs were still queued, so that
    #: the other threads ran those meanwhile (offload.worker.lanes)
    lane_claims_ahead: int = 0
    #: times the event loop went STALL_AFTER seconds without a turn (an async handler's
    #: blocking call; see offload.worker.stall)
    stalls: int = 0
    started_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Running:
    """A claimed task from its start until its verdict; ``lost`` once its lease is gone
    (its result is then discarded: another worker may be running it)."""

    claim: Claimed
    task: TaskFunction | None
    info: TaskInfo | None
    started: float
    lost: bool = False
    future: Any = None
    #: time.monotonic() when the lease ends unless renewed (from what the broker applied)
    lease_end: float = float("inf")
    #: the lease length the broker applied at the last claim or heartbeat, seconds
    lease_length: float = 60.0
    #: the timeout's (or, after it, the abandonment's) loop timer
    timer: Any = None
    #: the thread running a plain-function handler, while it runs
    thread: int | None = None
    timeout_error: BaseException | None = None
    #: the run's peak resident memory in bytes (process executor: exact, its child's;
    #: else the worker's high-water growth during it, approximate); None: not measured
    rss: int | None = None
    #: the worker's ru_maxrss (KiB) as last read when the run started (approximate figure)
    rss_base: int = 0
    #: claimed and run by a lane (offload.worker.lanes): a good ending is acked by the tick
    lane: bool = False
    #: its caller's result was stored from the handler's thread (see TaskRunner._run_thread)
    result_stored: bool = False


def _lease_length(c: Claimed, declared: float) -> float:
    if c.lease_until > c.now > 0:
        return c.lease_until - c.now
    return declared


def _deadline(task_id: str, headers: dict[str, str]) -> float | None:
    raw = headers.get(_env.DEADLINE)
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        log.warning("task %s: ignoring a bad deadline header %r", task_id, raw)
        return None
    return value if value == value else None  # nan: no deadline
