"""arq on Redis. Worker: ``arq peer_arq.WorkerSettings`` with its defaults (max_jobs=10,
poll_delay=0.5 s: arq polls its sorted set), results not kept. No batch send API.
"""

from __future__ import annotations

import asyncio
import sys
import time

from _common import BODY, REC, Peer, async_paced, bench_url, main, redis_flush
from arq import create_pool
from arq.connections import RedisSettings

URL = bench_url("redis://127.0.0.1:6379/15")


async def noop(ctx, sent: float = 0.0) -> None:
    if BODY:
        await BODY.run()
    REC.hit(sent)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(URL)
    keep_result = 0


class TunedSettings:  # arq reads the class's own __dict__: no inheritance
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(URL)
    keep_result = 0
    max_jobs = 256
    poll_delay = 0.005


class ArqPeer(Peer):
    name = "arq"
    worker_note = "defaults: max_jobs=10, poll_delay=0.5 s"
    tuned_note = "max_jobs=256, poll_delay=5 ms"
    url = URL

    def setup(self) -> None:
        redis_flush(URL)

    teardown = setup

    async def _loop(self, n: int, sent: float = 0.0) -> float:
        pool = await create_pool(RedisSettings.from_dsn(URL))
        await pool.enqueue_job("noop", 0.0)
        t = time.perf_counter()
        for _ in range(n):
            await pool.enqueue_job("noop", sent)
        el = time.perf_counter() - t
        await pool.aclose()
        return el

    def enqueue(self, n: int) -> float:
        return asyncio.run(self._loop(n))

    def ping(self) -> None:
        async def go() -> None:
            pool = await create_pool(RedisSettings.from_dsn(URL))
            await pool.enqueue_job("noop", -1.0)
            await pool.aclose()

        asyncio.run(go())

    def paced(self, n: int, rate: float) -> None:
        async def go() -> None:
            pool = await create_pool(RedisSettings.from_dsn(URL))
            await async_paced(lambda s: pool.enqueue_job("noop", s), n, rate)
            await pool.aclose()

        asyncio.run(go())

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "arq", "peer_arq.WorkerSettings"]

    def tuned_cmd(self) -> list[str]:
        return [sys.executable, "-m", "arq", "peer_arq.TunedSettings"]


def make(args):
    return ArqPeer()


if __name__ == "__main__":
    import peer_arq

    main(peer_arq.make, URL)
