"""The demo application: a small shop's monolith, with its slow jobs moved onto queues.

- ``front_signup`` is what a web request handler would call: it saves nothing itself,
  it just enqueues follow-up work and returns at once.
- ``index_document`` is memory-hungry but CPU-light: it builds a big in-memory index.
  This is the job that one day moves to a cheap high-memory machine.
- ``charge_card`` calls a flaky external payment API that fails now and then: it retries
  with exponential backoff, and a card that can never be charged ends in dead letters.
- ``send_welcome`` goes out through a rate-limited queue (the mail provider allows 20/s).
- ``charge_card`` and ``send_welcome`` are sent as named tasks, so a double-submitted
  signup charges once and sends one email, not two.

Run it bounded with ``python examples/demo.py``, or open-ended with workers (README).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from offload import App, Fail, Retry, current_task

app = App("demo", broker=os.environ.get("OFFLOAD_BROKER", "sqlite:///demo.db"))

app.queue(
    "emails",
    rate="20/s",
    bucket_size=5,
    max_concurrent=4,
    lease=30,
    retry=Retry(limit=3, min_backoff=0.1, max_backoff=1.0, max_doublings=2),
)
app.queue(
    "payments",
    max_concurrent=8,
    lease=30,
    retry=Retry(limit=6, min_backoff=0.05, max_backoff=0.5, max_doublings=3),
)
app.queue("indexing", max_concurrent=2, lease=60)

INDEX_MB = int(os.environ.get("DEMO_INDEX_MB", "64"))
FLAKY = float(os.environ.get("DEMO_FLAKY", "0.25"))


@app.task(queue="indexing")
def index_document(user_id: int, words: int = 50_000) -> int:
    """Memory-hungry, CPU-light: hold a big buffer while 'indexing' (mostly waiting)."""
    buf = bytearray(INDEX_MB * 1024 * 1024)  # the memory the job really needs
    for i in range(0, len(buf), 4096):  # touch every page so it is really resident
        buf[i] = 1
    time.sleep(0.05)  # waiting on storage, not computing
    return len(buf) + words


@app.task(queue="payments")
async def charge_card(user_id: int, cents: int) -> None:
    """An external API that fails sometimes: retried with backoff, never lost."""
    await asyncio.sleep(0.01)
    if cents < 0:
        raise Fail(f"refusing to charge a negative amount ({cents}) for user {user_id}")
    if user_id % 50 == 13:  # a card the provider always declines
        raise RuntimeError(f"card of user {user_id} declined by the provider")
    if random.random() < FLAKY:
        raise ConnectionError("payment API timed out")
    if random.random() < 0.05:
        raise Retry(after=0.2, reason="payment API asked us to slow down")


@app.task(queue="emails")
async def send_welcome(user_id: int, email: str) -> None:
    """Rate-limited by the queue; named per user, so duplicates are dropped at send."""
    info = current_task()
    assert info.name == f"welcome-{user_id}"
    await asyncio.sleep(0.005)


def front_signup(user_id: int) -> None:
    """What a web request handler does: enqueue, return fast."""
    from offload import TaskAlreadyExists

    email = f"user{user_id}@example.com"
    index_document.send(user_id)  # re-indexing twice is harmless: no name needed
    try:
        # Named: a double-submitted form charges once and welcomes once.
        charge_card.send_with(args=(user_id,), kwargs={"cents": 1999}, name=f"charge-{user_id}")
        send_welcome.send_with(args=(user_id, email), name=f"welcome-{user_id}")
    except TaskAlreadyExists:
        pass  # the first submission's tasks are already on their way
