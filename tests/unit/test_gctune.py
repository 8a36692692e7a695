"""The worker's garbage-collector tuning (offload/worker/gctune.py): on while the worker
runs, cycles still collected without anyone calling gc.collect(), and the collector put back
as it was when the worker stops."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from offload import App, Worker
from offload.worker import gctune


@pytest.fixture
def default_gc():
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0, "another test left objects frozen"
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_tune_spaces_young_collections_and_untune_puts_them_back(default_gc):
    gc.set_threshold(700, 10, 10)
    saved = gctune.tune()
    assert gc.get_threshold() == (gctune.YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 1000  # what the imports made
    gctune.untune(saved)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_a_collector_turned_off_or_tuned_higher_is_left_so(default_gc):
    gc.set_threshold(0, 10, 10)
    saved = gctune.tune()
    assert gc.get_threshold() == (0, 10, 10)
    gctune.untune(saved)
    gc.set_threshold(50_000, 20, 20)
    saved = gctune.tune()
    assert gc.get_threshold() == (50_000, 20, 20)
    gctune.untune(saved)


def test_cycles_are_still_collected_automatically_once_tuned(default_gc):
    saved = gctune.tune()
    try:
        cycle = weakref.ref(_Node())
        assert cycle() is not None  # alive until the collector runs: a real cycle
        keep = []
        for i in range(4 * gctune.YOUNG_THRESHOLD):
            keep.append([i])  # net allocations: they trigger a young collection
            if cycle() is None:
                break
        assert cycle() is None, "no automatic collection after 4x the young threshold"
    finally:
        gctune.untune(saved)


def test_a_worker_tunes_while_it_runs_and_restores_after(tmp_path, default_gc):
    app = App("gct", broker=f"sqlite:///{tmp_path}/q.db")
    seen = []

    @app.task(name="look")
    async def look() -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))

    @app.task(name="look_thread")
    def look_thread() -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))

    app.get_task("look").send()
    app.get_task("look_thread").send()
    before = gc.get_threshold()
    stats = asyncio.run(Worker(app, burst=True, tune_gc=True).run())
    assert stats.succeeded == 2
    assert [t for t, _ in seen] == [gctune.YOUNG_THRESHOLD] * 2
    assert all(frozen > 1000 for _, frozen in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    # left out, the collector is not touched
    app.get_task("look").send()
    seen.clear()
    asyncio.run(Worker(app, burst=True).run())
    assert seen == [(before[0], 0)]
    app.close()
