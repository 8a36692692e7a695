"""What one task leaves behind must not reach the next: a context variable a handler sets
(a request id, a tenant, a logging context) belongs to its own run, as it would in an
``asyncio.Task`` of its own or a fresh thread, on the event loop and on the handler
threads, however the worker started it (one by one, in a batch, or on a lane)."""

from __future__ import annotations

import contextvars

import pytest

from offload import App
from offload.testing.apps import run_until_idle

pytestmark = pytest.mark.timeout(60)

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")


@pytest.mark.parametrize("kind", ["async_first_step", "async_later_step", "sync"])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_context_variable_set_by_one_task_is_not_seen_by_the_next(broker_url, kind, concurrency):
    app = App("iso", broker=broker_url)
    app.queue("q")
    seen: list[tuple[int, str]] = []

    if kind == "sync":

        @app.task(queue="q", name="t")
        def t(i: int) -> None:
            seen.append((i, tenant.get()))
            tenant.set(f"task-{i}")

    else:
        later = kind == "async_later_step"

        @app.task(queue="q", name="t")
        async def t(i: int) -> None:
            import asyncio

            if later:
                await asyncio.sleep(0)  # past the handler's first step
            seen.append((i, tenant.get()))
            tenant.set(f"task-{i}")
            await asyncio.sleep(0)
            assert tenant.get() == f"task-{i}"  # its own setting holds across awaits

    t.send_many([((i,), {}) for i in range(40)])
    stats = run_until_idle(app, concurrency=concurrency)
    app.close()
    assert stats.succeeded == 40
    assert len(seen) == 40
    leaked = [(i, v) for i, v in seen if v]
    assert not leaked, f"tasks saw a value an earlier task set: {leaked[:5]}"
    assert tenant.get() == ""  # nor does the caller's context


def test_a_handler_that_times_itself_out_before_its_first_await_fails_alone(broker_url):
    """``asyncio.timeout()`` (like anyio's scopes, or a client library's read timeout)
    takes the task it runs in at its start: the handler's own, whichever step it is in.
    Taken from the worker's claim loop instead, it would cancel the worker."""
    import asyncio

    app = App("iso", broker=broker_url)
    app.queue("q")
    seen: list[tuple[int, str]] = []
    mine: set[int] = set()

    @app.task(queue="q", name="t")
    async def t(i: int) -> None:
        task = asyncio.current_task()
        assert task is not None and id(task) not in mine  # a task of its own, each run
        mine.add(id(task))
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            seen.append((i, "timed out"))
            return
        seen.append((i, "not timed out"))

    t.send_many([((i,), {}) for i in range(6)])
    stats = run_until_idle(app, concurrency=4, timeout=20)
    app.close()
    assert stats.succeeded == 6
    assert sorted(seen) == [(i, "timed out") for i in range(6)]
