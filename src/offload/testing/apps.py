"""Helpers for testing an application's own tasks against a real (SQLite) broker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from ..app import App
from ..worker import Worker, WorkerStats
from ..worker.runner import run as run_loop

__all__ = ["run_until_idle"]


def run_until_idle(
    app: App,
    queues: Sequence[str] | None = None,
    *,
    concurrency: int = 8,
    timeout: float = 60.0,
    loop: str | None = None,
) -> WorkerStats:
    """Run a worker until the queues are empty (scheduled retries included), then return
    what it did. Raises TimeoutError when work is still left after ``timeout`` seconds.
    ``loop`` is the event loop's kind, as ``offload worker --loop`` takes it (default:
    ``$OFFLOAD_LOOP``, else ``auto``). No broker helper process
    (:mod:`offload.worker.brokerhost`): a test's backlog is over before one would
    answer, and starting it would only add to the test's time."""

    async def main() -> WorkerStats:
        worker = Worker(
            app, queues=queues, concurrency=concurrency, burst=True, broker_process="off"
        )
        task = asyncio.ensure_future(worker.run())
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            worker.stop(hurry=True)
            await task
            raise TimeoutError(f"queues still had work after {timeout}s") from None

    if loop is None:
        loop = os.environ.get("OFFLOAD_LOOP") or "auto"
    return run_loop(main(), loop=loop)  # asyncio.run, bounded: see offload/worker/runner.py
