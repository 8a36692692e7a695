"""Benchmark offload.chan against the stdlib (and janus/culsans, when installed).

Run:  .venv/bin/python bench/bench_chan.py [--n 20000] [--repeat 3]
Prints a markdown table and writes it to docs/benchmarks-chan.md (between markers, so the
analysis around it stays). Every row is best-of-``repeat`` ops/s, measured in this run, and
the ratio is offload.chan over the peer named on that row.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import platform
import queue
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from offload.chan import Chan  # noqa: E402

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


def best(fn: Callable[[int], None], n: int, repeat: int) -> float:
    """Best ops/s over ``repeat`` runs of ``fn(n)``."""
    rates = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn(n)
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


# -- threads ----------------------------------------------------------------------------------


def thread_pingpong_chan(n: int) -> None:
    ping: Chan[int] = Chan()
    pong: Chan[int] = Chan()

    def echo() -> None:
        for _ in range(n):
            pong.send(ping.recv())

    t = threading.Thread(target=echo)
    t.start()
    for i in range(n):
        ping.send(i)
        pong.recv()
    t.join()


def thread_pingpong_queue(n: int) -> None:
    ping: queue.Queue[int] = queue.Queue(1)
    pong: queue.Queue[int] = queue.Queue(1)

    def echo() -> None:
        for _ in range(n):
            pong.put(ping.get())

    t = threading.Thread(target=echo)
    t.start()
    for i in range(n):
        ping.put(i)
        pong.get()
    t.join()


def thread_buffered_chan(n: int) -> None:
    c: Chan[int] = Chan(1024)

    def consume() -> None:
        for _ in range(n):
            c.recv()

    t = threading.Thread(target=consume)
    t.start()
    for i in range(n):
        c.send(i)
    t.join()


def thread_buffered_queue(n: int) -> None:
    q: queue.Queue[int] = queue.Queue(1024)

    def consume() -> None:
        for _ in range(n):
            q.get()

    t = threading.Thread(target=consume)
    t.start()
    for i in range(n):
        q.put(i)
    t.join()


# -- asyncio ----------------------------------------------------------------------------------


def async_pingpong_chan(n: int) -> None:
    async def main() -> None:
        ping: Chan[int] = Chan()
        pong: Chan[int] = Chan()

        async def echo() -> None:
            for _ in range(n):
                await pong.async_send(await ping.async_recv())

        t = asyncio.create_task(echo())
        for i in range(n):
            await ping.async_send(i)
            await pong.async_recv()
        await t

    asyncio.run(main())


def async_pingpong_queue(n: int) -> None:
    async def main() -> None:
        ping: asyncio.Queue[int] = asyncio.Queue(1)
        pong: asyncio.Queue[int] = asyncio.Queue(1)

        async def echo() -> None:
            for _ in range(n):
                await pong.put(await ping.get())

        t = asyncio.create_task(echo())
        for i in range(n):
            await ping.put(i)
            await pong.get()
        await t

    asyncio.run(main())


def async_buffered_chan(n: int) -> None:
    async def main() -> None:
        c: Chan[int] = Chan(1024)

        async def consume() -> None:
            for _ in range(n):
                await c.async_recv()

        t = asyncio.create_task(consume())
        for i in range(n):
            await c.async_send(i)
        await t

    asyncio.run(main())


def async_buffered_queue(n: int) -> None:
    async def main() -> None:
        q: asyncio.Queue[int] = asyncio.Queue(1024)

        async def consume() -> None:
            for _ in range(n):
                await q.get()

        t = asyncio.create_task(consume())
        for i in range(n):
            await q.put(i)
        await t

    asyncio.run(main())


# -- thread <-> task ---------------------------------------------------------------------------


def mixed_chan(n: int) -> None:
    async def main() -> None:
        c: Chan[int] = Chan(1024)

        def produce() -> None:
            for i in range(n):
                c.send(i)

        t = threading.Thread(target=produce)
        t.start()
        for _ in range(n):
            await c.async_recv()
        await asyncio.to_thread(t.join)

    asyncio.run(main())


def mixed_pingpong_chan(n: int) -> None:
    async def main() -> None:
        ping: Chan[int] = Chan()
        pong: Chan[int] = Chan()

        def echo() -> None:
            for _ in range(n):
                pong.send(ping.recv())

        t = threading.Thread(target=echo)
        t.start()
        for i in range(n):
            await ping.async_send(i)
            await pong.async_recv()
        await asyncio.to_thread(t.join)

    asyncio.run(main())


def mixed_pingpong_peer(modname: str) -> Callable[[int], None] | None:
    try:
        mod: Any = importlib.import_module(modname)
    except ImportError:
        return None

    def run(n: int) -> None:
        async def main() -> None:
            ping = mod.Queue(1)
            pong = mod.Queue(1)

            def echo() -> None:
                for _ in range(n):
                    pong.sync_q.put(ping.sync_q.get())

            t = threading.Thread(target=echo)
            t.start()
            for i in range(n):
                await ping.async_q.put(i)
                await pong.async_q.get()
            await asyncio.to_thread(t.join)
            for q in (ping, pong):
                q.close()
                await q.wait_closed()

        asyncio.run(main())

    return run


def mixed_peer(modname: str) -> Callable[[int], None] | None:
    try:
        mod: Any = importlib.import_module(modname)
    except ImportError:
        return None

    def run(n: int) -> None:
        async def main() -> None:
            q = mod.Queue(1024)

            def produce() -> None:
                for i in range(n):
                    q.sync_q.put(i)

            t = threading.Thread(target=produce)
            t.start()
            for _ in range(n):
                await q.async_q.get()
            await asyncio.to_thread(t.join)
            q.close()
            await q.wait_closed()

        asyncio.run(main())

    return run


# -- memory -----------------------------------------------------------------------------------


def idle_bytes(cap: int, used: bool) -> int:
    """Bytes held by one idle channel (tracemalloc, averaged over 1000 channels)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    chans = [Chan(cap) for _ in range(1000)]
    if used:
        for c in chans:
            for i in range(cap):
                c.send_nowait(i)
            for _ in range(cap):
                c.recv_nowait()
    size = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del chans
    return size // 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    n, rep = args.n, args.repeat

    rows: list[tuple[str, str, float, str, float | None, float | None]] = []

    def row(
        name: str, mine: Callable[[int], None], peer_name: str, peer: Any, target: float
    ) -> None:
        a = best(mine, n, rep)
        if peer is None:
            rows.append((name, f"{a:,.0f}", target, f"{peer_name} (not installed)", None, None))
            return
        b = best(peer, n, rep)
        rows.append((name, f"{a:,.0f}", target, f"{peer_name} {b:,.0f}", a / b, target))

    row("thread ping-pong (round trips/s)", thread_pingpong_chan, "queue.Queue",
        thread_pingpong_queue, 1.0)  # fmt: skip
    row("thread buffered cap=1024 (items/s)", thread_buffered_chan, "queue.Queue",
        thread_buffered_queue, 1.5)  # fmt: skip
    row("asyncio ping-pong (round trips/s)", async_pingpong_chan, "asyncio.Queue",
        async_pingpong_queue, 0.8)  # fmt: skip
    row("asyncio buffered cap=1024 (items/s)", async_buffered_chan, "asyncio.Queue",
        async_buffered_queue, 0.8)  # fmt: skip
    row("thread -> task cap=1024 (items/s)", mixed_chan, "janus", mixed_peer("janus"), 2.0)
    row("thread -> task cap=1024 (items/s)", mixed_chan, "culsans", mixed_peer("culsans"), 2.0)
    for peer in ("janus", "culsans"):
        row("thread <-> task ping-pong (round trips/s)", mixed_pingpong_chan, peer,
            mixed_pingpong_peer(peer), 2.0)  # fmt: skip

    lines = [
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{threading.active_count()} thread(s) at start, n={n}, best of {rep}.",
        "",
        "| benchmark | offload.chan | peer | ratio | target | met |",
        "|---|---:|---:|---:|---:|:-:|",
    ]
    for name, mine, target, peer, ratio, tgt in rows:
        if ratio is None:
            lines.append(f"| {name} | {mine} | {peer} | - | >= {target}x | skipped |")
        else:
            met = "yes" if ratio >= (tgt or 0) else "**no**"
            lines.append(f"| {name} | {mine} | {peer} | {ratio:.2f}x | >= {tgt}x | {met} |")
    for cap, used in ((0, False), (0, True), (16, True), (1024, True)):
        b = idle_bytes(cap, used)
        state = "after use" if used else "fresh"
        met = "yes" if b < 1024 else "**no**"
        lines.append(f"| idle Chan({cap}) {state} (bytes) | {b} | - | - | < 1024 | {met} |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return
    doc = ROOT / "docs" / "benchmarks-chan.md"
    block = f"{BEGIN}\n{table}\n{END}"
    if doc.exists() and BEGIN in doc.read_text():
        text = doc.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        doc.write_text(head + block + tail)
    else:
        doc.write_text(f"# offload.chan benchmarks\n\n{block}\n")


if __name__ == "__main__":
    main()
