"""An ``async def`` handler that blocks the event loop is named while it holds it, with the
line it is blocked on, on every broker; a handler that awaits is never taken for one."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time

import pytest

from offload import App
from offload.testing.apps import run_until_idle
from offload.worker import stall

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def quick_stalls(monkeypatch):
    monkeypatch.setattr(stall, "STALL_AFTER", 0.4)


def make_app(url: str) -> App:
    app = App("stalls", broker=url)
    app.queue("q")
    return app


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_a_handler_that_sleeps_on_the_loop_is_named_with_its_line(broker_url, caplog, loop):
    app = make_app(broker_url)
    others: list[float] = []

    @app.task(queue="q", name="blocker")
    async def blocker() -> None:
        # the careless call:
        time.sleep(1.2)

    @app.task(queue="q", name="polite")
    async def polite() -> None:
        await asyncio.sleep(0.01)
        others.append(time.monotonic())

    h = blocker.send()
    for _ in range(3):
        polite.send()
    caplog.set_level(logging.WARNING, logger="offload.worker")
    stats = run_until_idle(app, concurrency=8, timeout=30, loop=loop)
    app.close()
    assert stats.succeeded == 4 and stats.stalls == 1, stats
    held = [r.getMessage() for r in caplog.records if "has not run for" in r.getMessage()]
    assert len(held) == 1, caplog.text
    assert f"task {h.id} (blocker, queue q) holds it" in held[0]
    assert "test_worker_stall.py" in held[0] and "in blocker (time.sleep(1.2))" in held[0]
    assert "make the handler a plain def" in held[0]
    again = [r.getMessage() for r in caplog.records if "ran again after" in r.getMessage()]
    assert len(again) == 1 and f"held by task {h.id} (blocker" in again[0], caplog.text
    seconds = float(again[0].split("ran again after ")[1].split("s")[0])
    assert 0.9 <= seconds <= 2.0, again[0]


def test_a_blocking_call_inside_a_library_names_both_lines(broker_url, caplog):
    app = make_app(broker_url)

    @app.task(queue="q", name="shell")
    async def shell() -> None:
        subprocess.run(["sleep", "1"], check=True)

    shell.send()
    caplog.set_level(logging.WARNING, logger="offload.worker")
    stats = run_until_idle(app, timeout=30)
    app.close()
    assert stats.succeeded == 1 and stats.stalls == 1, stats
    [held] = [r.getMessage() for r in caplog.records if "has not run for" in r.getMessage()]
    assert "test_worker_stall.py" in held and "in shell (subprocess.run(" in held
    assert "subprocess.py:" in held  # the innermost frame, in the standard library


def test_handlers_that_await_or_run_on_threads_are_never_taken_for_a_stall(broker_url, caplog):
    app = make_app(broker_url)

    @app.task(queue="q", name="waits")
    async def waits() -> None:
        await asyncio.sleep(1.0)

    @app.task(queue="q", name="threaded")
    def threaded() -> None:
        time.sleep(1.0)  # a plain def runs on a thread: the loop goes on

    waits.send()
    threaded.send()
    caplog.set_level(logging.WARNING, logger="offload.worker")
    stats = run_until_idle(app, timeout=30)
    app.close()
    assert stats.succeeded == 2 and stats.stalls == 0, stats
    assert "has not run for" not in caplog.text
