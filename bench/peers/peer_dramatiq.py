"""Dramatiq on Redis. Worker: ``dramatiq peer_dramatiq --processes 1`` with its default 8
threads (the CLI forks one worker process under a supervisor: RSS is the sum of both).
No batch send API (``group().run()`` enqueues one by one): bulk is not measured.
"""

from __future__ import annotations

import sys
import time

import dramatiq
from _common import BODY, REC, Peer, bench_url, main, redis_flush, sync_paced
from dramatiq.brokers.redis import RedisBroker

URL = bench_url("redis://127.0.0.1:6379/15")
broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0, queue_name="bench")
def noop(sent: float = 0.0) -> None:
    if BODY:
        BODY.sync()
    REC.hit(sent)


class DramatiqPeer(Peer):
    name = "Dramatiq"
    worker_note = "1 process, 8 threads (default)"
    tuned_note = "1 process, 32 threads"
    url = URL

    def setup(self) -> None:
        redis_flush(URL)

    teardown = setup

    def enqueue(self, n: int) -> float:
        noop.send(0.0)
        t = time.perf_counter()
        for _ in range(n):
            noop.send(0.0)
        return time.perf_counter() - t

    def paced(self, n: int, rate: float) -> None:
        sync_paced(noop.send, n, rate)

    def ping(self) -> None:
        noop.send(-1.0)

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "dramatiq", "peer_dramatiq", "--processes", "1",
                "--threads", "8"]

    def tuned_cmd(self) -> list[str]:
        return [sys.executable, "-m", "dramatiq", "peer_dramatiq", "--processes", "1",
                "--threads", "32"]


def make(args):
    return DramatiqPeer()


if __name__ == "__main__":
    import peer_dramatiq

    main(peer_dramatiq.make, URL)
