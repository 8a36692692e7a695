"""Giving a connection back to the broker's pool so that a cancel cannot lose it.

psycopg_pool's ``AsyncConnectionPool.putconn`` hands a returned connection to a caller
queued for one: it takes that caller off the queue, then waits for the caller's lock (held
until the caller's own wait has started). A cancel landing in that wait loses both: the
connection never reaches the pool again, and the queued caller, off the queue, waits out
``pool_timeout`` and gets ``PoolTimeout``. A worker cancels its idle ``wait()`` whenever a
slot frees, often just as that wait gives its connection back while the worker's verdict
of the task that freed the slot waits for one: the verdict, and the caller waiting for the
task's result, then waited ten seconds.

:func:`give_back` runs ``putconn``'s first step in the caller, as an ``await`` would; most
returns end there (nobody queued, no lock taken), at no extra cost. A return that has to
wait finishes in a task of its own, which a cancel of the caller does not reach; the caller
still sees its cancel. (A task for every return added about a quarter to a local
``SELECT 1``'s time, one call after another.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ...core.resumed import Resumed

__all__ = ["give_back"]

# returns finishing in a task of their own: the loop holds tasks weakly
_RETURNING: set[asyncio.Task[None]] = set()


async def give_back(pool: AsyncConnectionPool, conn: psycopg.AsyncConnection) -> None:
    """``await pool.putconn(conn)``, except that a cancel of the caller meanwhile does not
    stop the return half-way."""
    put = pool.putconn(conn)
    try:
        pending = put.send(None)
    except StopIteration:
        return
    task = asyncio.ensure_future(_finish(put, pending))
    _RETURNING.add(task)
    task.add_done_callback(_RETURNING.discard)
    await asyncio.shield(task)


async def _finish(coro: Coroutine[Any, Any, None], pending: Any) -> None:
    await Resumed(coro, pending, 0.0)
