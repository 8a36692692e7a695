"""Celery on Redis. Worker: ``celery worker --pool solo`` (one process, no pool: the fastest
for no-op tasks), without gossip/mingle/heartbeat, results ignored, ack on receipt
(Celery's default). Celery has no batch send (``group()`` publishes one message per task),
so bulk enqueue is not measured.
"""

from __future__ import annotations

import sys
import time

from _common import BODY, REC, Peer, bench_url, main, redis_flush, sync_paced
from celery import Celery

URL = bench_url("redis://127.0.0.1:6379/15")
app = Celery("bench", broker=URL)
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False, worker_prefetch_multiplier=4)


@app.task(name="noop")
def noop(sent: float = 0.0) -> None:
    if BODY:
        BODY.sync()
    REC.hit(sent)


class CeleryPeer(Peer):
    name = "Celery"
    worker_note = "--pool solo"
    tuned_note = "--pool threads --concurrency 32"
    url = URL

    def setup(self) -> None:
        redis_flush(URL)

    teardown = setup

    def enqueue(self, n: int) -> float:
        noop.delay(0.0)
        t = time.perf_counter()
        for _ in range(n):
            noop.delay(0.0)
        return time.perf_counter() - t

    def paced(self, n: int, rate: float) -> None:
        sync_paced(noop.delay, n, rate)

    def ping(self) -> None:
        noop.delay(-1.0)

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "peer_celery", "worker", "--pool", "solo",
                "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]

    def tuned_cmd(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "peer_celery", "worker", "--pool",
                "threads", "--concurrency", "32", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "WARNING"]


def make(args):
    return CeleryPeer()


if __name__ == "__main__":
    import peer_celery

    main(peer_celery.make, URL)
