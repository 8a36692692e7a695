"""A shop split in two services, for the monolith-vs-split tests: workers run it as
``tests.services.splitapp:app``. Handlers append what they did to the sink file."""

from __future__ import annotations

import os

from offload import App, Fail, Retry, current_task

app = App("split", broker=os.environ.get("OFFLOAD_BROKER", "sqlite:///split.db"))
fast = Retry(limit=2, min_backoff=0.05, max_backoff=0.1)
# A short lease: a task handed to a worker that is then killed comes back in seconds.
app.queue("orders", retry=fast, lease=3)
app.queue("indexing", retry=fast, lease=3)
indexer = app.service(
    "indexer", memory="2GiB", cpu=0.25, executor=os.environ.get("SPLIT_EXECUTOR", "thread")
)


def record(event: str, key: int) -> None:
    t = current_task()
    line = f"{event} {key} {t.attempt} {os.getpid()} {t.queue}\n"
    fd = os.open(os.environ["SPLIT_SINK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: atomic across processes
    finally:
        os.close(fd)


@app.task(queue="orders", name="place_order")
def place_order(order: int) -> None:
    """The web side: takes the order, then hands the heavy part to the indexer."""
    record("order", order)
    build_index.send(order)


@indexer.task(queue="indexing", name="build_index")
def build_index(doc: int) -> None:
    """The memory-hungry side: some documents fail once, some for good."""
    if doc % 13 == 0:
        raise Fail(f"document {doc} is unreadable")
    if doc % 7 == 0 and current_task().attempt == 1:
        raise RuntimeError(f"document {doc}: index shard busy")
    record("index", doc)
