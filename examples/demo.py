"""The bounded demo: a burst of signups through the demo app, searches answered by the
index within a deadline while the workers run, then a readable summary.

    python examples/demo.py [--users 100] [--workers-concurrency 16]

It uses a fresh SQLite file in a temporary directory unless OFFLOAD_BROKER is set.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console
from rich.table import Table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    opts = parser.parse_args()
    console = Console()

    tmp = None
    if "OFFLOAD_BROKER" not in os.environ:
        tmp = tempfile.TemporaryDirectory(prefix="offload-demo-")
        os.environ["OFFLOAD_BROKER"] = f"sqlite:///{pathlib.Path(tmp.name) / 'demo.db'}"
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from demo_app import app, front_page, front_search, front_signup

    from offload import Worker

    console.print(f"[bold]offload demo[/bold] on {app.broker_url}")

    # 1. The "web front": request threads publish signups; a fifth of users double-submit.
    users = list(range(1, opts.users + 1)) + list(range(1, opts.users + 1, 5))
    latencies: list[float] = []

    def request(uid: int) -> None:
        t0 = time.perf_counter()
        front_signup(uid)
        latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(request, users))
    front_s = time.perf_counter() - t0
    latencies.sort()
    console.print(
        f"front: {len(users)} signup requests ({len(users) - opts.users} double-submits) "
        f"in {front_s:.2f}s; enqueue time per request p50 "
        f"{latencies[len(latencies) // 2] * 1e3:.2f} ms, p99 "
        f"{latencies[int(len(latencies) * 0.99)] * 1e3:.2f} ms"
    )

    # 2. A worker serves every queue; meanwhile the front asks the search index for
    #    results within a deadline (a call), one by one and fanned out under one deadline.
    t0 = time.perf_counter()
    worker = Worker(app, concurrency=opts.concurrency, install_signal_handlers=False)
    loop = asyncio.new_event_loop()
    done: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: done.update(stats=loop.run_until_complete(worker.run())), daemon=True
    )
    runner.start()
    answers = [front_search(q) for q in ("shoes", "red", "hat")]  # waits for the listener
    search_ms: list[float] = []
    for q in ("shoes", "red", "hat", "coat", "blue", "boots") * 5:
        t1 = time.perf_counter()
        front_search(q)
        search_ms.append((time.perf_counter() - t1) * 1e3)
    search_ms.sort()
    page = asyncio.run(front_page(["shoes", "scarf", "black"]))
    console.print(
        f"search: front_search('shoes') -> {answers[0]}; {len(search_ms)} calls with a 2 s "
        f"deadline while the workers clear the signup backlog, round trip p50 "
        f"{search_ms[len(search_ms) // 2]:.1f} ms, max "
        f"{search_ms[-1]:.1f} ms; front_page fanned out {len(page)} searches under one "
        "deadline"
    )
    while any(  # the demo's own wait for the backlog to drain, not the library's
        (st := app.stats(q)).ready + st.scheduled + st.leased for q in app.queues
    ):
        time.sleep(0.1)
    loop.call_soon_threadsafe(worker.stop)
    runner.join()
    loop.close()
    stats = done["stats"]
    work_s = time.perf_counter() - t0

    # 3. The summary.
    table = Table(title=f"queues after {work_s:.1f}s of work")
    for col in ("queue", "ready", "scheduled", "leased", "dead", "policy"):
        table.add_column(col, justify="left" if col in ("queue", "policy") else "right")
    for name, p in sorted(app.queues.items()):
        s = app.stats(name)
        pol = []
        if p.rate:
            pol.append(f"{p.rate:g}/s bucket {p.bucket:g}")
        if p.max_concurrent:
            pol.append(f"max {p.max_concurrent} at once")
        pol.append(f"retry limit {p.retry.limit}")
        table.add_row(
            name, str(s.ready), str(s.scheduled), str(s.leased), str(s.dead), ", ".join(pol)
        )
    console.print(table)

    mt = Table(title="measured per task function")
    for col in ("task", "runs", "failures", "wall avg ms", "cpu avg ms", "peak RSS MiB"):
        mt.add_column(col, justify="left" if col == "task" else "right")
    peaks = {}
    for m in sorted(app.metrics(), key=lambda m: m.task):
        peaks[m.task] = m.mem_peak_max / 2**20
        mt.add_row(
            m.task,
            str(m.count),
            str(m.failures),
            f"{m.wall_total / m.count * 1e3:.1f}",
            f"{m.cpu_total / m.count * 1e3:.1f}",
            f"{peaks[m.task]:.1f}",
        )
    console.print(mt)

    dead = app.dead_letters("payments")
    console.print(
        f"worker: {stats.claimed} claims, {stats.succeeded} succeeded, "
        f"{stats.retried} retries, {stats.dead} dead-lettered"
    )
    emails = opts.users
    console.print(
        f"events: {len(users) - emails} double-submits charged and welcomed once "
        "(user.signed_up published with key=, fanned out to emails and payments)"
    )
    console.print(
        f"emails: {emails} welcome emails through a "
        f"20/s queue: at least {(emails - 5) / 20:.1f}s by the token bucket"
    )
    for d in dead[:3]:
        console.print(
            f"  dead letter: {d.task}{tuple(d.args or ())} after {d.attempts} attempts: {d.error}",
            highlight=False,
        )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(
        f"peak RSS of this process: {peak_mb:.0f} MB; index_document ran in child processes "
        f"(the indexer service's process executor, memory limit 512 MiB) and peaked at "
        f"{peaks.get('demo_app.index_document', 0):.0f} MiB per run, measured: the job to "
        "move to a high-memory pool (examples/topology.toml)"
    )
    app.close()
    leftover = sum(
        app.stats(q).ready + app.stats(q).scheduled + app.stats(q).leased for q in app.queues
    )
    app.close()
    if tmp is not None:
        tmp.cleanup()
    if leftover:
        console.print(f"[red]{leftover} tasks were left unfinished[/red]")
        return 1
    console.print("[green]every task finished or was dead-lettered with its reason[/green]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
