"""The demo application: a small shop's monolith, with its slow jobs moved onto queues.

- ``front_signup`` is what a web request handler would call: it saves nothing itself,
  it just enqueues follow-up work and returns at once.
- ``index_document`` is memory-hungry but CPU-light: it builds a big in-memory index.
  This is the job that one day moves to a cheap high-memory machine.
- ``charge_card`` calls a flaky external payment API that fails now and then: it retries
  with exponential backoff, and a card that can never be charged ends in dead letters.
- ``send_welcome`` goes out through a rate-limited queue (the mail provider allows 20/s).
- A signup is an *event*: ``front_signup`` publishes ``user.signed_up`` once, and every
  service that subscribes (``send_welcome`` on emails, ``charge_card`` on payments) gets
  it, all enqueued in one broker transaction. The publish is keyed by the user, so a
  double-submitted signup charges once and sends one email, not two.
- ``search_products`` runs on the search index's own queue; ``front_search`` (a web
  handler) *calls* it with a 2-second deadline and gets the hits back, or
  ``DeadlineExceeded`` when the index is too slow (and then the index never starts the
  late request). ``front_page`` asks three services at once with ``call_async`` under one
  deadline shared by all branches (``offload.chan.ErrGroup``).

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
app.queue("search", lease=10)

CATALOG = [f"{colour} {item}" for colour in ("red", "blue", "black") for item in
           ("shoes", "hat", "scarf", "coat", "boots")]  # fmt: skip

INDEX_MB = int(os.environ.get("DEMO_INDEX_MB", "64"))
# How long an index run holds its memory waiting on storage. The bounded demo keeps it
# short; the story (examples/story) sets seconds, as a production indexer would hold it,
# which is what makes the job memory-hungry and CPU-light for the planner.
INDEX_WAIT = float(os.environ.get("DEMO_INDEX_WAIT", "0.05"))
FLAKY = float(os.environ.get("DEMO_FLAKY", "0.25"))
# How long a search waits on the search index. The bounded demo keeps it at 2 ms; the
# story sets tens of ms, a real index's query time, so web slots are really in flight.
SEARCH_WAIT = float(os.environ.get("DEMO_SEARCH_WAIT", "0.002"))


# The memory-hungry job is its own service: its tasks run in child processes, each held
# to a memory limit (a runaway document costs its own task, never the worker), and a
# topology file can place it on a high-memory machine (see topology.toml).
indexer = app.service(
    "indexer", memory=f"{INDEX_MB + 32}MiB", cpu=0.1, executor="process", memory_limit="512MiB"
)


@indexer.task(queue="indexing")
def index_document(user_id: int, words: int = 50_000) -> int:
    """Memory-hungry, CPU-light: hold a big buffer while 'indexing' (mostly waiting)."""
    buf = bytearray(INDEX_MB * 1024 * 1024)  # the memory the job really needs
    for i in range(0, len(buf), 4096):  # touch every page so it is really resident
        buf[i] = 1
    time.sleep(INDEX_WAIT)  # waiting on storage, not computing
    return len(buf) + words


@app.on("user.signed_up", queue="payments")
async def charge_card(user: dict) -> None:
    """An external API that fails sometimes: retried with backoff, never lost."""
    user_id, cents = user["id"], user["cents"]
    await asyncio.sleep(0.01)
    if cents < 0:
        raise Fail(f"refusing to charge a negative amount ({cents}) for user {user_id}")
    if user_id % 50 == 13:  # a card the provider always declines
        raise RuntimeError(f"card of user {user_id} declined by the provider")
    if random.random() < FLAKY:
        raise ConnectionError("payment API timed out")
    if random.random() < 0.05:
        raise Retry(after=0.2, reason="payment API asked us to slow down")


@app.on("user.signed_up", queue="emails")
async def send_welcome(user: dict) -> None:
    """Rate-limited by the queue; one per user, whatever the form did."""
    assert current_task().headers["event"] == "user.signed_up"
    await asyncio.sleep(0.005)


@app.task(queue="search")
def search_products(q: str, limit: int = 3) -> list[str]:
    """The search index: a query in, the best hits out (a call returns them)."""
    time.sleep(SEARCH_WAIT)
    return [p for p in CATALOG if q in p][:limit]


def front_signup(user_id: int) -> None:
    """What a web request handler does: enqueue, return fast."""
    index_document.send(user_id)  # re-indexing twice is harmless: no name needed
    user = {"id": user_id, "email": f"user{user_id}@example.com", "cents": 1999}
    # One event, every subscriber; keyed, so a double-submitted form delivers once.
    app.publish("user.signed_up", user, key=f"signup-{user_id}")


def front_search(q: str) -> list[str]:
    """A web handler asking the index, within 2 seconds (DeadlineExceeded after)."""
    return search_products.call_with(args=(q,), timeout=2.0)


async def front_page(queries: list[str], timeout: float = 2.0) -> dict[str, list[str]]:
    """Fan out: one search per query at once, all under one shared deadline; the first
    failure cancels the rest (ErrGroup), and DeadlineExceeded ends them all on time."""
    from offload import chan

    ctx, cancel = chan.with_timeout(chan.background(), timeout)
    try:
        group, gctx = chan.ErrGroup.with_context(ctx)
        hits: dict[str, list[str]] = {}

        async def one(q: str) -> None:
            hits[q] = await search_products.call_with_async(args=(q,), context=gctx)

        for q in queries:
            group.go(one, q)
        await group.async_wait()
        return hits
    finally:
        cancel()
