"""Where a Redis task's enqueue-to-start latency goes: one idle offload worker, tasks sent
one at a time at a steady rate, each stamped at four points, against the redis-py floor
(a sync ``RPUSH`` read by an asyncio ``BLPOP``) measured in the same run.

    .venv/bin/python bench/latency_parts.py [--n 1000] [--rate 100] [--flavor async|sync]

Stamps (``time.time()``, one clock for both processes on one machine):

* ``sent``: the sender, just before ``send()``; ``returned``: just after it;
* ``popped``: the worker, when its ``BLPOP`` on its inbox returned the handed-off task
  (the enqueue script leased it to the parked worker and pushed it there);
* ``started``: the first line of the handler.

So ``popped - sent`` is the enqueue script and Redis's wake-up of the blocked worker (the
floor's whole path, plus the script), and ``started - popped`` is the worker's own part:
decoding the hand-off, starting the task and, for a ``def`` task, the hop to a thread. The
worker's stamps come from wrapping two of its functions in the worker process only; the
library is unchanged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

URL = "redis://127.0.0.1:6379/11?prefix=latparts"


def _app(flavor: str, out: str):
    from offload import App

    app = App("latparts", broker=URL)
    app.queue("lat")
    stamps: list[tuple[float, float, float]] = []
    last_pop = [0.0]

    def record(sent: float) -> None:
        now = time.time()
        if sent < 0:
            return  # warm-up
        stamps.append((sent, last_pop[0], now))
        if len(stamps) == int(os.environ["LAT_N"]):
            with open(out, "w") as f:
                json.dump(stamps, f)

    if flavor == "sync":

        @app.task(queue="lat", name="t")
        def t(sent: float) -> None:
            record(sent)
    else:

        @app.task(queue="lat", name="t")
        async def t(sent: float) -> None:  # type: ignore[misc]
            record(sent)

    return app, t, last_pop


def worker_main(flavor: str, out: str, ready: mp.Queue) -> None:
    import offload.brokers.redis.broker as rb
    from offload import Worker

    app, _, last_pop = _app(flavor, out)
    real = rb.blpop

    async def stamped(*a, **k):
        popped = await real(*a, **k)
        last_pop[0] = time.time()
        return popped

    rb.blpop = stamped

    async def run() -> None:
        w = Worker(app, queues=["lat"], concurrency=32)
        task = asyncio.ensure_future(w.run())
        ready.put("ready")
        while not os.path.exists(out):
            await asyncio.sleep(0.05)
        w.stop()
        await task

    asyncio.run(run())


def offload_run(n: int, rate: float, flavor: str, tmp: str) -> dict[str, list[float]]:
    out = os.path.join(tmp, f"stamps-{flavor}.json")
    os.environ["LAT_N"] = str(n)
    app, t, _ = _app(flavor, out)
    app.purge("lat")
    ctx = mp.get_context("spawn")  # a fresh interpreter, as a deployed worker is
    ready = ctx.Queue()
    p = ctx.Process(target=worker_main, args=(flavor, out, ready))
    p.start()
    ready.get(timeout=60)
    for _ in range(20):  # warm-up: connections, the first claims, the parking
        t.send(-1.0)
        time.sleep(0.01)
    time.sleep(0.5)
    returned = []
    t0 = time.perf_counter()
    for i in range(n):
        time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        sent = time.time()
        t.send(sent)
        returned.append(time.time() - sent)
    p.join(60)
    with open(out) as f:
        stamps = json.load(f)
    app.close()
    return {
        "send() returned": returned,
        "popped - sent": [pop - s for s, pop, _ in stamps],
        "started - popped": [st - pop for _, pop, st in stamps],
        "started - sent (total)": [st - s for s, _, st in stamps],
    }


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))] * 1000


def main() -> int:
    import tempfile

    import floor_redis

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--flavor", default="async,sync")
    args = ap.parse_args()
    floor_redis.N, floor_redis.RATE = args.n, args.rate
    p50, p99 = floor_redis.pair(floor_redis.redispy_consumer, floor_redis.redispy_producer)
    print(f"{'floor: redis-py RPUSH -> asyncio BLPOP':40s} p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        for flavor in args.flavor.split(","):
            parts = offload_run(args.n, args.rate, flavor, tmp)
            print(f"offload, {'def' if flavor == 'sync' else 'async def'} task:")
            for name, xs in parts.items():
                print(f"  {name:38s} p50 {pct(xs, 0.5):.3f} ms  p99 {pct(xs, 0.99):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
