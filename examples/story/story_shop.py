"""The demo shop (``examples/demo_app.py``) as the story runs it: the same App, queues,
services and handlers, plus a ledger and one page of the web front.

**The ledger.** With ``$STORY_LEDGER`` set (``redis://host:port/db#KEY``), each handler of
the demo that the story sends work to (``index_document``, ``charge_card``,
``send_welcome``) is wrapped so that a run that returns records its business key
(``index:<user>``, ``charge:<user>``, ``welcome:<user>``) in a Redis hash: the first run's
start time and process id (``HSETNX``), and a run count (``HINCRBY``). It is idempotent: a
task that runs twice leaves one key with a count of 2 (a duplicate, which at-least-once
delivery allows), and a task that never ran leaves no key (lost). The wrapper is set on
the registered task function itself and named after this module, so the process
executor's child, which looks a function up by module and name, imports this module and
runs the wrapped function too. Without ``$STORY_LEDGER`` nothing is wrapped: the monolith
of the story's first step runs the demo exactly as it is.

**The page.** :func:`account_page` is what a web handler of the shop would do for a
signed-in user: search the catalog (the ``default`` service, the web pool) and re-index
the user's document (the ``indexer`` service, its own pool) at once, every branch
under one deadline (``offload.chan`` Context and ErrGroup): the page gets every answer in
time, or ``DeadlineExceeded`` at the deadline and no late work is started.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from demo_app import app, charge_card, front_signup, index_document, search_products, send_welcome

from offload import chan
from offload.task import TaskFunction

__all__ = [
    "PAGE_USERS",
    "account_page",
    "app",
    "charge_card",
    "front_signup",
    "index_document",
    "search_products",
    "send_welcome",
]

#: user ids from here up belong to the page's calls, not to signups (kept apart in the ledger)
PAGE_USERS = 10_000_000

_local = threading.local()


def _client() -> tuple[Any, str]:
    """This thread's Redis client for the ledger and the ledger's key (a client per thread:
    handler threads and the process executor's child each have their own)."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        import redis

        url, _, key = os.environ["STORY_LEDGER"].partition("#")
        conn = _local.conn = (redis.Redis.from_url(url), key)
    return conn


def record(key: str, started: float) -> None:
    """One successful run of the task whose business key is ``key``."""
    client, ledger = _client()
    pipe = client.pipeline(transaction=False)
    pipe.hsetnx(f"{ledger}:first", key, f"{started:.6f} {os.getpid()}")
    pipe.hincrby(f"{ledger}:runs", key, 1)
    pipe.execute()


def _ledgered(tf: TaskFunction, key_of: Callable[..., str]) -> None:
    """Wrap ``tf``'s handler so each run that returns is recorded under ``key_of(*args)``."""
    inner = tf.fn
    if getattr(inner, "__story_ledger__", False):
        return
    if tf.is_async:

        @functools.wraps(inner)
        async def run(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            value = await inner(*args, **kwargs)
            await asyncio.to_thread(record, key_of(*args, **kwargs), started)
            return value
    else:

        @functools.wraps(inner)
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.time()
            value = inner(*args, **kwargs)
            record(key_of(*args, **kwargs), started)
            return value

    # The process executor's child finds the handler by module and qualified name: point
    # it here, where the name is the same TaskFunction, wrapped when this module loads.
    run.__module__, run.__qualname__ = __name__, tf.fn.__name__
    run.__story_ledger__ = True  # type: ignore[attr-defined]
    tf.fn = run


if os.environ.get("STORY_LEDGER"):
    _ledgered(index_document, lambda user_id, words=0: f"index:{user_id}")
    _ledgered(charge_card, lambda user: f"charge:{user['id']}")
    _ledgered(send_welcome, lambda user: f"welcome:{user['id']}")


async def account_page(user_id: int, queries: list[str], timeout: float) -> dict[str, Any]:
    """Fan out to two services under one deadline: a search per query (the web pool) and
    a re-index of the user's document (the indexer's pool). The first failure, or the
    deadline, cancels the other branches (ErrGroup); raises ``DeadlineExceeded`` then."""
    ctx, cancel = chan.with_timeout(chan.background(), timeout)
    try:
        group, gctx = chan.ErrGroup.with_context(ctx)
        page: dict[str, Any] = {}

        async def search(q: str) -> None:
            page[q] = await search_products.call_with_async(args=(q,), context=gctx)

        async def reindex() -> None:
            page["indexed_bytes"] = await index_document.call_with_async(
                args=(user_id,), kwargs={"words": 10}, context=gctx
            )

        for q in queries:
            group.go(search, q)
        group.go(reindex)
        await group.async_wait()
        return page
    finally:
        cancel()
