"""The calls test app: imported by tests and by ``offload worker`` subprocesses, which read
its broker URL from OFFLOAD_BROKER."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import os
import time
import uuid

from offload import App, Fail, Retry, current_task

app = App("calls", call_timeout=10.0)
app.queue("search")
app.queue("front")
app.queue("emails")
app.queue("payments")
app.queue("audit")
app.queue("flaky", retry=Retry(limit=1, min_backoff=0.1, max_backoff=0.1))
app.queue("reports")
app.queue("strict", retry=Retry(limit=0))
app.queue("invoices")
# a lease short enough for a test to outlive it, and no retry: a claim whose worker died
# has exhausted the policy before this worker's first run of it
app.queue("fragile", lease=0.3, retry=Retry(limit=0))

billing = app.service("billing")

SINK = os.environ.get("CALLS_SINK", "")


def _note(line: str) -> None:
    if SINK:
        with open(SINK, "a") as f:
            f.write(line + "\n")


@dataclasses.dataclass
class Hit:
    title: str
    score: float


@app.task(queue="search")
def echo(value: object) -> object:
    return value


@app.task(queue="search")
def hits(q: str, limit: int = 2) -> list[Hit]:
    return [Hit(f"{q}-{i}", 1.0 / (i + 1)) for i in range(limit)]


@app.task(queue="search")
def score(hit: Hit) -> float:
    """A typed parameter: the worker rebuilds the Hit, or refuses the payload unrun."""
    return hit.score


@app.task(queue="search")
async def aecho(value: object) -> object:
    return value


@app.task(queue="strict")
def boom(message: str) -> None:
    raise ValueError(message)


@app.task(queue="search")
def refuse(message: str) -> None:
    raise Fail(message)


@app.task(queue="strict")
def unsendable() -> object:
    return object()


@app.task(queue="search")
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


@app.task(queue="search")
async def aslow(seconds: float) -> str:
    import asyncio

    await asyncio.sleep(seconds)
    return "slept"


@app.task(queue="search")
def remaining() -> float:
    ctx = current_task().context
    left = ctx.remaining()
    return -1.0 if left is None else left


@app.task(queue="front")
def front(q: str) -> dict:
    """Two hops: the front asks the search queue, inheriting its own deadline."""
    left = current_task().context.remaining()
    inner = remaining.call()
    return {"front_left": left, "inner_left": inner, "pid": os.getpid()}


@app.task(queue="search")
def marked(key: str) -> str:
    _note(f"ran {key}")
    return key


@app.task(queue="flaky")
def flaky(key: str) -> str:
    attempt = current_task().attempt
    _note(f"flaky {key} {attempt}")
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return f"ok on {attempt}"


@app.task(queue="fragile")
def fragile(key: str) -> str:
    _note(f"fragile {key}")
    return key


@app.task(queue="flaky")
def always_fails(key: str) -> str:
    raise RuntimeError(f"no luck for {key}")


@app.on("user.signed_up", queue="emails")
def welcome(user: dict) -> None:
    _note(f"welcome {user['id']}")


@app.on("user.signed_up", queue="payments")
def open_account(user: dict) -> None:
    _note(f"account {user['id']}")


@app.on("user.signed_up", queue="audit")
def audit(user: dict) -> None:
    _note(f"audit {user['id']}")


@billing.on("order.placed", queue="invoices")
def invoice(order: dict) -> None:
    """A subscriber of another service: it runs in that service's pool."""
    _note(f"invoice {order['id']}")


@app.periodic("* * * * * *", queue="reports")
def tick() -> None:
    _note(f"tick {current_task().name} {time.time():.3f}")


VALUES = [
    None,
    True,
    -7,
    2**70,
    3.5,
    "héllo",
    b"\x00\xff",
    [1, "a", [2.5]],
    {"a": 1, "b": [None]},
    (1, "x"),
    {1, 2},
    decimal.Decimal("1.10"),
    uuid.UUID(int=7),
    dt.date(2024, 2, 29),
    dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
    dt.datetime(2024, 1, 1, 12),
    dt.timedelta(seconds=90),
    {(1, 2): "tuple key"},
]
