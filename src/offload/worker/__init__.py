"""Running work: the worker runtime and its thread pool."""

from .runtime import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
