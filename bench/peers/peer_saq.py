"""saq on Redis. Worker: ``saq peer_saq.settings --workers 1`` (one process), concurrency 10
(its default). No batch send API.
"""

from __future__ import annotations

import asyncio
import sys
import time

from _common import BODY, REC, Peer, async_paced, bench_url, main, redis_flush
from redis.asyncio import Redis
from saq import Queue
from saq.queue.redis import RedisQueue

URL = bench_url("redis://127.0.0.1:6379/15")


async def noop(ctx, *, sent: float = 0.0) -> None:
    if BODY:
        await BODY.run()
    REC.hit(sent)


queue = Queue.from_url(URL, name="bench")
settings = {"queue": queue, "functions": [noop], "concurrency": 10}
# 256 jobs in flight need more than redis-py's default pool of 100 connections (saq's
# Queue.from_url takes no pool size): the tuned worker gets a client of its own
tuned = {
    **settings,
    "concurrency": 256,
    "queue": RedisQueue(Redis.from_url(URL, max_connections=1024), name="bench"),
}


class SaqPeer(Peer):
    name = "saq"
    worker_note = "--workers 1, concurrency 10"
    tuned_note = "--workers 1, concurrency 256"
    url = URL

    def setup(self) -> None:
        redis_flush(URL)

    teardown = setup

    async def _loop(self, n: int, sent: float = 0.0) -> float:
        q = Queue.from_url(URL, name="bench")
        await q.connect()
        await q.enqueue("noop", sent=0.0)
        t = time.perf_counter()
        for _ in range(n):
            await q.enqueue("noop", sent=sent)
        el = time.perf_counter() - t
        await q.disconnect()
        return el

    def enqueue(self, n: int) -> float:
        return asyncio.run(self._loop(n))

    def ping(self) -> None:
        async def go() -> None:
            q = Queue.from_url(URL, name="bench")
            await q.connect()
            await q.enqueue("noop", sent=-1.0)
            await q.disconnect()

        asyncio.run(go())

    def paced(self, n: int, rate: float) -> None:
        async def go() -> None:
            q = Queue.from_url(URL, name="bench")
            await q.connect()
            await async_paced(lambda s: q.enqueue("noop", sent=s), n, rate)
            await q.disconnect()

        asyncio.run(go())

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "saq", "peer_saq.settings", "--workers", "1", "--quiet"]

    def tuned_cmd(self) -> list[str]:
        return [sys.executable, "-m", "saq", "peer_saq.tuned", "--workers", "1", "--quiet"]


def make(args):
    return SaqPeer()


if __name__ == "__main__":
    import peer_saq

    main(peer_saq.make, URL)
