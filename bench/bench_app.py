"""The offload App the benchmark's worker processes run: no-op tasks that only record when
they ran (see ``bench/peers/_common.py``). The broker comes from ``$OFFLOAD_BROKER``.

    OFFLOAD_BROKER=sqlite:///tmp/b.db python -m offload worker bench.bench_app:app -c 256
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

from _common import BODY, REC

from offload import App

app = App("bench")


@app.task(name="noop")
async def noop(sent: float = 0.0) -> None:
    """The benchmark's task: an async no-op (runs on the worker's event loop); with
    ``$BENCH_BODY`` set, one Redis INCR first (the real-body figure)."""
    if BODY:
        await BODY.run()
    REC.hit(sent)


@app.task(name="noop_sync")
def noop_sync(sent: float = 0.0) -> None:
    """The same as a plain function (runs on the worker's threads)."""
    if BODY:
        BODY.sync()
    REC.hit(sent)
