"""Observation hooks: the worker calls these; metrics, the dashboard and the planner
subscribe by subclassing. The defaults do nothing, so an unobserved worker pays a call."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .brokers.base import Claimed
    from .task import TaskInfo

__all__ = ["Hooks"]


class Hooks:
    """Override what you need. Hooks run on the worker's event loop: keep them quick."""

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
