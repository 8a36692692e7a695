"""Fan out to three slow services, keep the first two answers, give up at the deadline.

The same handler twice: once on threads (blocking ``select``), once on asyncio
(``async_select``). Each fake service sleeps by waiting on its Context, so when the handler
returns (and cancels), the services still running stop at once instead of leaking.

    python examples/fanout.py
"""

from __future__ import annotations

import asyncio
import time

from offload.chan import (
    Chan,
    Context,
    DeadlineExceeded,
    async_select,
    background,
    go,
    recv,
    select,
    send,
    with_cancel,
    with_timeout,
)

SERVICES = {"pricing": 0.2, "stock": 0.5, "reviews": 2.0}  # name -> latency in seconds


# -- thread style ---------------------------------------------------------------------------


def call_service(ctx: Context, name: str, latency: float, out: Chan[str]) -> None:
    """A fake remote call: ``latency`` seconds of work that stops when ``ctx`` is done."""
    try:
        select(recv(ctx.done()), timeout=latency)
        return  # cancelled before the answer was ready
    except TimeoutError:
        pass  # the "work" finished
    # Deliver, unless the handler has already gone: never block on a caller that left.
    select(send(out, f"{name}: ok after {latency}s"), recv(ctx.done()))


def handler(parent: Context, want: int = 2) -> list[str]:
    """Ask every service at once; return the first ``want`` answers or raise at the deadline."""
    ctx, cancel = with_cancel(parent)
    try:
        answers: Chan[str] = Chan()
        for name, latency in SERVICES.items():
            go(call_service, ctx, name, latency, answers)
        got: list[str] = []
        while len(got) < want:
            i, answer, _ = select(recv(answers), recv(ctx.done()))
            if i == 1:
                raise ctx.err() or DeadlineExceeded()
            got.append(answer)
        return got
    finally:
        cancel()  # stop the services still working


# -- asyncio style --------------------------------------------------------------------------


async def async_call_service(ctx: Context, name: str, latency: float, out: Chan[str]) -> None:
    try:
        await async_select(recv(ctx.done()), timeout=latency)
        return
    except TimeoutError:
        pass
    await async_select(send(out, f"{name}: ok after {latency}s"), recv(ctx.done()))


async def async_handler(parent: Context, want: int = 2) -> list[str]:
    ctx, cancel = with_cancel(parent)
    try:
        answers: Chan[str] = Chan()
        for name, latency in SERVICES.items():
            go(async_call_service, ctx, name, latency, answers)
        got: list[str] = []
        while len(got) < want:
            i, answer, _ = await async_select(recv(answers), recv(ctx.done()))
            if i == 1:
                raise ctx.err() or DeadlineExceeded()
            got.append(answer)
        return got
    finally:
        cancel()


def run(label: str, timeout: float, fn: object) -> None:
    ctx, cancel = with_timeout(background(), timeout)
    t0 = time.monotonic()
    try:
        result = asyncio.run(fn(ctx)) if asyncio.iscoroutinefunction(fn) else fn(ctx)  # type: ignore[operator]
        print(f"{label:8} deadline {timeout}s -> {result} in {time.monotonic() - t0:.2f}s")
    except DeadlineExceeded as e:
        print(f"{label:8} deadline {timeout}s -> gave up: {e} in {time.monotonic() - t0:.2f}s")
    finally:
        cancel()


def main() -> None:
    run("threads", 1.0, handler)
    run("threads", 0.3, handler)
    run("asyncio", 1.0, async_handler)
    run("asyncio", 0.3, async_handler)


if __name__ == "__main__":
    main()
