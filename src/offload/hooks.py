"""Observation hooks: the worker calls these; metrics, the dashboard and the planner
subscribe by subclassing. The defaults do nothing, so an unobserved worker pays a call."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .brokers.base import Claimed
    from .task import TaskInfo

__all__ = ["Hooks"]


class Hooks:
    """Override what you need. Hooks run on the worker's event loop: keep them quick.

    A subclass whose methods may also be called from the worker's handler threads says so
    with ``thread_safe = True``; the worker then lets its threads claim and run plain
    ``def`` tasks without a turn of the loop per task (:mod:`offload.worker.lanes`), and
    calls ``claimed``, ``started`` and ``succeeded`` for those from the thread that runs
    them. Any other subclass keeps every hook on the loop, at the cost of that speed."""

    #: whether these hooks may be called from handler threads too (see above)
    thread_safe: bool = False

    def claimed(self, claim: Claimed) -> None:
        """A task was leased by this worker."""

    def started(self, info: TaskInfo) -> None:
        """Its handler is about to run."""

    def succeeded(self, info: TaskInfo) -> None:
        """Its handler returned; the ack is queued."""

    def retried(self, claim: Claimed, delay: float, error: str) -> None:
        """It failed and runs again after ``delay`` seconds."""

    def dead(self, claim: Claimed, error: str) -> None:
        """It was dead-lettered."""
