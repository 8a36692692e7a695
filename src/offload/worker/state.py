"""The worker's bookkeeping records: its counters and one entry per running task."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..brokers.base import Claimed
    from ..task import TaskFunction, TaskInfo

__all__ = ["Running", "WorkerStats"]


@dataclass(slots=True)
class WorkerStats:
    """What this worker did since it started (also what ``--burst`` prints)."""

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0
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
