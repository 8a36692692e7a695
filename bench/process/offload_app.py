"""offload's side: one process-executor service (the tasks run in child processes)."""

from __future__ import annotations

import os

from _body import burn, hit

from offload import App

app = App("procbench", broker=os.environ.get("OFFLOAD_BROKER", "redis://127.0.0.1:6379/12"))
app.queue("proc")
svc = app.service("work", executor="process")


@svc.task(queue="proc", name="noop")
def noop(n: int, sent: float = 0.0) -> None:
    hit(n, sent)


@svc.task(queue="proc", name="cpu")
def cpu(n: int, seconds: float) -> None:
    burn(seconds)
    hit(n, 0.0)
