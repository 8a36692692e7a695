"""RQ on Redis. RQ's default worker forks a child per job; for no-op tasks the fastest is
``SimpleWorker`` (runs jobs in the worker process), used here. ``result_ttl=0`` (results
discarded). Bulk: ``Queue.enqueue_many`` (one pipeline per 1,000 jobs).
"""

from __future__ import annotations

import sys
import time

from _common import BODY, REC, Peer, bench_url, main, redis_flush, sync_paced
from redis import Redis
from rq import Queue

URL = bench_url("redis://127.0.0.1:6379/15")


def noop(sent: float = 0.0) -> None:
    if BODY:
        BODY.sync()
    REC.hit(sent)


class RQPeer(Peer):
    name = "RQ"
    worker_note = "SimpleWorker (no fork per job)"
    bulk_note = "enqueue_many, 1,000 per pipeline"
    url = URL

    def __init__(self) -> None:
        self.q = Queue("bench", connection=Redis.from_url(URL))

    def setup(self) -> None:
        redis_flush(URL)

    teardown = setup

    def _send(self, sent: float) -> None:
        self.q.enqueue(noop, sent, result_ttl=0)

    def enqueue(self, n: int) -> float:
        self._send(0.0)
        t = time.perf_counter()
        for _ in range(n):
            self._send(0.0)
        return time.perf_counter() - t

    def bulk(self, n: int) -> float:
        t = time.perf_counter()
        for i in range(0, n, 1000):
            self.q.enqueue_many([Queue.prepare_data(noop, (0.0,), result_ttl=0)
                                 for _ in range(min(1000, n - i))])
        return time.perf_counter() - t

    def paced(self, n: int, rate: float) -> None:
        sync_paced(self._send, n, rate)

    def ping(self) -> None:
        self._send(-1.0)

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "rq.cli", "worker", "-u", URL, "-w",
                "rq.worker.SimpleWorker", "bench", "-q"]


def make(args):
    return RQPeer()


if __name__ == "__main__":
    import peer_rq

    main(peer_rq.make, URL)
