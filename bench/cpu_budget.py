"""Where an ``async def`` real-body task's time goes, in CPU seconds rather than rates.

The real-body ratio (``run.py --body-only``) is a rate against the body's rate in a bare
loop, and on a machine whose speed drifts by a third from one minute to the next, its
rounds spread from 0.5x to 1.0x. Both sides are bound by one core, so the same question
can be put in CPU time, which drifts less: per broker, a burst worker's CPU per task when
each task does 0, 1 and 2 Redis ``INCR`` s (so offload's own CPU per task, and what an
``INCR`` costs inside the worker), beside an ``INCR``'s CPU in the bare loop, with the
standard event loop and uvloop's, all in one run:

    .venv/bin/python bench/cpu_budget.py [--rounds 3] [--n 10000] [--brokers sqlite,redis,postgres]

A worker at ``0.8x`` of the floor spends at most a quarter of an ``INCR``'s CPU on its own
work per task. Each figure is the worker process's user+system CPU (every thread) for N
prefilled tasks, minus that of the same worker over 256 (start-up, shut-down and the
body's 64 connections), divided by N - 256; the median of the rounds. Needs what
``run.py`` needs (Redis database 15 for the queue, 14 for the body; PostgreSQL schema
``offload_cpu_budget``).

On SQLite the worker starts its broker helper process for the backlog
(``--broker-process auto``, offload/worker/brokerhost.py); its CPU is in these figures (the
worker's children are counted), although it runs on the other core. Set
``OFFLOAD_BROKER_PROCESS=off`` to measure the worker making its claims and acks itself.

This module is also the App those workers run (``bench.cpu_budget:app``): one task, whose
number of ``INCR`` s comes from ``$BENCH_BODY_REPEAT``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH / "peers"))
sys.path.insert(0, str(BENCH))
os.environ.setdefault("BENCH_BODY", "incr")  # the worker's tasks use the body's client

from _common import BODY, pg_exec, redis_flush  # noqa: E402

from offload import App  # noqa: E402

app = App("bench")
REPEAT = int(os.environ.get("BENCH_BODY_REPEAT", "1"))


@app.task(name="body")
async def body(sent: float = 0.0) -> None:
    for _ in range(REPEAT):
        await BODY.run()  # type: ignore[union-attr]


URLS = {
    "sqlite": "sqlite:///{tmp}/cpu_budget.db",
    "redis": "redis://127.0.0.1:6379/15?prefix=bench",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test?schema=offload_cpu_budget",
}
BASE = 256  # tasks of the subtracted run: start-up, shut-down and 64 body connections

TITLE = {"sqlite": "SQLite", "redis": "Redis", "postgres": "PostgreSQL"}


def _clean(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
    elif url.startswith("redis"):
        redis_flush(url.split("?", 1)[0])
    else:
        pg_exec(url.split("?", 1)[0], "DROP SCHEMA IF EXISTS offload_cpu_budget CASCADE")


def _prefill(url: str, n: int) -> None:
    sender = App("bench", broker=url)
    task = sender.task(name="body")(body.fn)
    calls = [((0.0,), {})] * 1000
    try:
        for i in range(0, n, 1000):
            task.send_many(calls[: min(1000, n - i)])
    finally:
        sender.close()


def worker_cpu(url: str, n: int, repeat: int) -> float:
    """CPU seconds of one burst worker over ``n`` prefilled tasks of ``repeat`` INCRs."""
    _clean(url)
    if n:
        _prefill(url, n)
    env = dict(os.environ, OFFLOAD_BROKER=url, PYTHONPATH=str(ROOT), BENCH_BODY_REPEAT=str(repeat))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "offload", "worker", "bench.cpu_budget:app", "--burst"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=600,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def floor_cpu(n: int, loop: str, concurrency: int = 64) -> float:
    """CPU seconds per INCR of the body alone, ``concurrency`` in flight: run.py's floor."""
    from offload_bench import floor

    return floor(n, False, concurrency, loop)["cpu_us"] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=10_000, help="tasks per figure (> 256)")
    ap.add_argument("--brokers", default="sqlite,redis,postgres")
    args = ap.parse_args()
    brokers = args.brokers.split(",")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "offload-cpu-budget"
    tmp.mkdir(exist_ok=True)
    us: dict[tuple[str, object], list[float]] = {}
    for r in range(args.rounds):
        for loop in ("asyncio", "uvloop"):
            us.setdefault(("floor", loop), []).append(1e6 * floor_cpu(args.n, loop))
        for b in brokers:
            url = URLS[b].format(tmp=tmp)
            for repeat in (0, 1, 2):
                base = worker_cpu(url, BASE, repeat)
                per = 1e6 * (worker_cpu(url, args.n, repeat) - base) / (args.n - BASE)
                us.setdefault((b, repeat), []).append(per)
        print(
            f"round {r + 1}: " + ", ".join(f"{k[0]}/{k[1]} {v[-1]:.1f}" for k, v in us.items()),
            file=sys.stderr,
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in us.items()}
    fa, fu = med[("floor", "asyncio")], med[("floor", "uvloop")]
    print(
        f"CPU per task, µs: median of {args.rounds} rounds, {args.n:,} tasks each "
        "(`python bench/cpu_budget.py`)\n"
    )
    print(
        "| broker | 0 INCR (offload's own) | 1 INCR | 2 INCRs | an INCR in the worker "
        "(2 - 1) | 1 INCR - 0 | the ratio this CPU allows (asyncio floor ÷ 1 INCR) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for b in brokers:
        k0, k1, k2 = med[(b, 0)], med[(b, 1)], med[(b, 2)]
        print(
            f"| {TITLE[b]} | {k0:.1f} | {k1:.1f} | {k2:.1f} | {k2 - k1:.1f} | {k1 - k0:.1f} "
            f"| {fa / k1:.2f}x |"
        )
    print(
        f"\nThe body alone, 64 in flight: {fa:.1f} µs per INCR on the standard event loop, "
        f"{fu:.1f} on uvloop's (a 0.8x worker spends at most {fa / 4:.1f} µs of its own "
        "per task)."
    )
    print(
        "Every round: "
        + "; ".join(f"{k[0]} {k[1]}: " + "/".join(f"{x:.1f}" for x in v) for k, v in us.items())
    )


if __name__ == "__main__":
    main()
