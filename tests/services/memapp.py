"""An app whose tasks run in child processes (the process executor): memory hogs, crashes
and ordinary work, for the executor's tests. Broker: $OFFLOAD_BROKER."""

from __future__ import annotations

import contextvars
import ctypes
import os
import signal
import time

from offload import App, Fail, Retry, current_task

app = App("memshop")
for _q in ("work", "work-big", "limited", "plain"):
    app.queue(_q, retry=Retry(limit=2, min_backoff=0.01, max_backoff=0.05))
for _q in ("once", "slow"):
    app.queue(_q, retry=Retry(limit=0))
app.queue("timed", retry=Retry(limit=0), timeout=1.0)
small = app.service("small", executor="process", memory_limit="120MiB")
big = app.service("big", executor="process", memory_limit="1GiB")
plain = app.service("plain", executor="process")

MiB = 1024 * 1024


@small.task(queue="work", on_oom="work-big")
def hog(mib: int, hold: float = 0.0) -> int:
    """Allocates ``mib`` MiB (touched, so resident) and keeps it ``hold`` seconds."""
    block = bytearray(mib * MiB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold)
    return len(block) // MiB


@small.task(queue="limited")
def hog_no_escalation(mib: int) -> int:
    block = bytearray(mib * MiB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block) // MiB


@small.task(queue="work", on_oom="work-big")
def hog_attempt(mib: int) -> int:
    """Allocates ``mib`` MiB and returns the attempt it ran as."""
    block = bytearray(mib * MiB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return current_task().attempt


@small.task(queue="slow")
def hog_slowly(trace: str, mib: int) -> None:
    """Grows by 4 MiB every few milliseconds, writing (time, RSS) after each step."""
    blocks = []
    with open(trace, "w") as f:
        for _ in range(mib // 4):
            block = bytearray(4 * MiB)
            for i in range(0, len(block), 4096):
                block[i] = 1
            blocks.append(block)
            with open("/proc/self/statm") as s:
                rss = int(s.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            f.write(f"{time.time()} {rss}\n")
            f.flush()
            time.sleep(0.003)


@big.task(queue="work-big")
def _unused_big_alloc(mib: int) -> int:  # makes the big service serve work-big
    block = bytearray(mib * MiB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


@plain.task(queue="once")
def report_pid_and_sleep(pidfile: str, seconds: float) -> None:
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


@plain.task(queue="timed")
def report_pid_and_sleep_briefly(pidfile: str, seconds: float) -> None:
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)


@plain.task(queue="plain")
def echo(x: int) -> dict:
    info = current_task()
    return {"x": x, "pid": os.getpid(), "attempt": info.attempt if info else -1}


tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="")


@plain.task(queue="plain")
def tenant_seen(i: int) -> str:
    """What an earlier task's context variable left behind in this child (nothing, if each
    run gets a context of its own), then sets it as a careless handler would."""
    seen = tenant.get()
    tenant.set(f"task-{i}")
    return seen


@plain.task(queue="plain")
def crash(how: str) -> None:
    if how == "exit":
        os._exit(3)
    if how == "segv":
        ctypes.string_at(0)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "fail":
        raise Fail("refused for good")
    if how == "retry":
        raise Retry(after=0.01, reason="not yet")
    if how == "value":
        raise ValueError("bad value \udcff\x00")


@plain.task(queue="plain")
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@plain.task(queue="plain")
async def async_echo(x: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return x * 2


@plain.task(queue="plain")
def burn(seconds: float) -> float:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return seconds


@plain.task(queue="plain")
def unsendable() -> object:
    """Returns a value no caller can receive (offload never pickles)."""
    return object()
