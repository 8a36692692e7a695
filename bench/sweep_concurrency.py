"""How the worker's concurrency (``-c``) changes its throughput with a real task body, per
handler kind and broker: the measurement behind the default (docs/benchmarks.md).

    .venv/bin/python bench/sweep_concurrency.py [--brokers sqlite,redis,postgres]
        [--c 8,16,32,64,128,256] [--n 10000] [--rounds 1]

Every figure is ``offload_bench.py body`` (a worker process draining a prefilled queue of
tasks that each do one Redis ``INCR``), ``def`` and ``async def``, beside the body alone
in a bare loop measured in the same run (sync: one thread; async: as many in flight as
the worker's ``-c``). Prints one table per broker, processed/s and the ratio to the floor;
with ``--rounds`` > 1 each figure is the median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = str(ROOT / ".venv" / "bin" / "python")
URLS = {
    "sqlite": "sqlite:///{tmp}/sweep.db",
    "redis": "redis://127.0.0.1:6379/15?prefix=sweep",
    "postgres": "postgresql://postgres@127.0.0.1:5432/test?schema=sweep",
}


def step(step: str, url: str, n: int, extra: list[str]) -> float | None:
    cmd = [PY, str(BENCH / "offload_bench.py"), step, "--n", str(n), "--url", url, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=600)
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            return None if "error" in res else float(res["rate"])
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", default="sqlite,redis,postgres")
    ap.add_argument("--c", default="8,16,32,64,128,256")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    levels = [int(x) for x in args.c.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for broker in args.brokers.split(","):
            url = URLS[broker].format(tmp=tmp)
            rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                sync_floor = step("floor", url, args.n, ["--flavor", "sync"])
                for c in levels:
                    async_floor = step("floor", url, args.n, ["-c", str(c)])
                    for kind, extra in (("def", ["--flavor", "sync"]), ("async def", [])):
                        rate = step("body", url, args.n, [*extra, "-c", str(c)])
                        floor = sync_floor if kind == "def" else async_floor
                        if rate and floor:
                            rows.setdefault((kind, c), []).append((rate, rate / floor))
            print(f"\n{broker}: processed/s (÷ the body alone in a bare loop)\n")
            print("| -c | `def` | `async def` |")
            print("|---:|---:|---:|")
            for c in levels:
                cells = []
                for kind in ("def", "async def"):
                    got = rows.get((kind, c))
                    if not got:
                        cells.append("failed")
                        continue
                    rate = statistics.median(r for r, _ in got)
                    ratio = statistics.median(x for _, x in got)
                    cells.append(f"{rate:,.0f} ({ratio:.2f}x)")
                print(f"| {c} | {cells[0]} | {cells[1]} |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
