"""taskiq with taskiq-redis's ``ListQueueBroker`` (a plain Redis list). Worker:
``taskiq worker peer_taskiq:broker --workers 1`` (a supervisor plus one worker process:
RSS is the sum), default max-async-tasks, no result backend. No batch send API.
"""

from __future__ import annotations

import asyncio
import sys
import time

from _common import BODY, REC, Peer, async_paced, bench_url, main, redis_flush
from taskiq_redis import ListQueueBroker

URL = bench_url("redis://127.0.0.1:6379/15")
broker = ListQueueBroker(url=URL, queue_name="bench")


@broker.task(task_name="noop")
async def noop(sent: float = 0.0) -> None:
    if BODY:
        await BODY.run()
    REC.hit(sent)


class TaskiqPeer(Peer):
    name = "taskiq"
    worker_note = "ListQueueBroker, --workers 1"
    tuned_note = "ListQueueBroker, --workers 1, --max-async-tasks 256"
    url = URL

    def setup(self) -> None:
        redis_flush(URL)

    teardown = setup

    async def _loop(self, n: int, sent: float = 0.0) -> float:
        await broker.startup()
        await noop.kiq(0.0)
        t = time.perf_counter()
        for _ in range(n):
            await noop.kiq(sent)
        el = time.perf_counter() - t
        await broker.shutdown()
        return el

    def enqueue(self, n: int) -> float:
        return asyncio.run(self._loop(n))

    def ping(self) -> None:
        asyncio.run(self._ping())

    async def _ping(self) -> None:
        await broker.startup()
        await noop.kiq(-1.0)
        await broker.shutdown()

    def paced(self, n: int, rate: float) -> None:
        async def go() -> None:
            await broker.startup()
            await async_paced(noop.kiq, n, rate)
            await broker.shutdown()

        asyncio.run(go())

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "taskiq", "worker", "peer_taskiq:broker", "--workers",
                "1", "--log-level", "WARNING"]

    def tuned_cmd(self) -> list[str]:
        return [*self.worker_cmd(), "--max-async-tasks", "256"]


def make(args):
    return TaskiqPeer()


if __name__ == "__main__":
    import peer_taskiq

    main(peer_taskiq.make, URL)
