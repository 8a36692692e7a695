"""The garbage collector of a process that runs a worker and nothing else.

CPython's cyclic collector is tuned for programs that build data and keep it. A worker
does the opposite: it imports a lot once, then makes and drops a few hundred short-lived
objects per task. With the default thresholds a full collection walks every object the
imports made (about 40,000 in a small app, 11 ms each on a slow core: a pause all running
tasks wait out), and a young one runs every 700 net allocations (a couple of tasks).
Measured on a worker whose ``async def`` handler does one Redis round trip, the collector
took about 5.4 µs of each task's 80; tuned as below, 1.4 µs, and the full pauses drop to
about 3 ms.

So, once the worker has started (its app, broker and driver imported): collect, then
:func:`gc.freeze` what survived (never scanned again; it lives as long as the process),
and collect young objects every 7,000 net allocations instead of 700 (most of a task's
objects die by reference count first, so each young collection costs little more).
Cycles a task leaves behind are still collected, a little later. `offload worker` and
`offload run` do this; a :class:`~offload.worker.runtime.Worker` made in an application's
own process does not unless asked (``tune_gc=True``), and puts the collector back as it
was when it stops.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune", "untune"]

YOUNG_THRESHOLD = 7000  # net allocations between young collections (CPython's default: 700)

Saved = tuple[tuple[int, int, int], bool]


def tune() -> Saved:
    """Freeze what the process holds now and space out young collections; returns what
    :func:`untune` needs to put things back."""
    saved = (gc.get_threshold(), gc.get_freeze_count() > 0)
    gc.collect()
    gc.freeze()
    young, mid, old = saved[0]
    if young:  # 0: automatic collection was turned off on purpose; it stays off
        gc.set_threshold(max(young, YOUNG_THRESHOLD), mid, old)
    return saved


def untune(saved: Saved) -> None:
    """Thresholds as they were; what :func:`tune` froze is scanned again (unless the
    process had frozen objects itself before)."""
    threshold, was_frozen = saved
    gc.set_threshold(*threshold)
    if not was_frozen:
        gc.unfreeze()
