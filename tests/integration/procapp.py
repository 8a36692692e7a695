"""An app for process-level tests: workers run it as ``tests.integration.procapp:app``.
Handlers record what they do in an append-only sink file outside the broker."""

from __future__ import annotations

import os
import time

from offload import App, Retry, current_task

app = App("proc", broker=os.environ.get("OFFLOAD_BROKER", "sqlite:///proc.db"))
app.queue(
    "q",
    lease=float(os.environ.get("PROC_LEASE", "1.0")),
    max_concurrent=int(os.environ["PROC_MAX_CONCURRENT"])
    if os.environ.get("PROC_MAX_CONCURRENT")
    else None,
    retry=Retry(limit=10, min_backoff=0.05, max_backoff=0.2),
)


def record(event: str, key: str) -> None:
    line = f"{event} {key} {os.getpid()} {time.time():.6f} {current_task().attempt}\n"
    fd = os.open(os.environ["PROC_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: atomic across processes
    finally:
        os.close(fd)


@app.task(queue="q", name="work")
def work(key: str, seconds: float = 0.0) -> None:
    record("start", key)
    time.sleep(seconds)
    record("end", key)


@app.task(queue="q", name="noop")
async def noop(key: str) -> None:
    record("end", key)


@app.task(queue="q", name="crash")
async def crash(key: str) -> None:
    """A short async task for the kill-every-2s crash test."""
    import asyncio

    record("start", key)
    await asyncio.sleep(float(os.environ.get("PROC_CRASH_SLEEP", "0.02")))
    record("end", key)
