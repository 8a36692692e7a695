"""Celery's side: the same bodies, run by ``celery worker --pool prefork -c 2``."""

from __future__ import annotations

import os

from _body import burn, hit
from celery import Celery

app = Celery("procbench", broker=os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/12"))
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False, worker_prefetch_multiplier=4)


@app.task(name="noop")
def noop(n: int, sent: float = 0.0) -> None:
    hit(n, sent)


@app.task(name="cpu")
def cpu(n: int, seconds: float) -> None:
    burn(seconds)
    hit(n, 0.0)
