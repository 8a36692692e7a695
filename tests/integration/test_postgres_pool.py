"""The PostgreSQL broker's connection pool under cancellation: a broker call cancelled
while it hands its connection back must not lose that connection (nor the caller queued
for it).

A worker cancels its idle ``wait()`` whenever a slot frees; when that cancel lands while
the wait's connection is on its way back to a pool that has a caller queued, psycopg_pool
(``putconn`` pops the queued caller, then waits for that caller's lock) drops both the
connection and the caller, who then waits out ``pool_timeout``: a worker's retry verdict
did, and its caller hit its deadline.
"""

from __future__ import annotations

import asyncio

import pytest

from offload.brokers import broker_from_url

from ..conftest import _drop_pg_schema, make_url

pytest.importorskip("psycopg")

POOL_TIMEOUT = 2.0


@pytest.fixture
def url(tmp_path):
    u = make_url("postgres", tmp_path) + f"&pool_min=1&pool_max=1&pool_timeout={POOL_TIMEOUT}"
    yield u
    _drop_pg_schema(u)


@pytest.fixture
async def broker(url):
    b = broker_from_url(url)
    await b.open()
    yield b
    await b.close()


async def _returned(broker) -> None:
    """Every connection of the pool is back in it (what a lost one never is)."""
    pool = broker._pool
    for _ in range(200):
        stats = pool.get_stats()
        if stats["pool_available"] == stats["pool_size"] and not stats["requests_waiting"]:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"connections not returned to the pool: {pool.get_stats()}")


@pytest.mark.parametrize("turns", range(6))
async def test_a_cancel_while_a_connection_goes_back_loses_nothing(broker, turns):
    """The holder is cancelled ``turns`` loop turns after it started giving its connection
    back to a pool where another call waits for it: at 1 and 2 (psycopg_pool 3.3) that is
    inside ``putconn``, waiting for the queued call's lock, the case that lost the
    connection; the others bracket it, as the count may differ in other versions.
    The queued call gets the connection at once and the pool ends whole."""
    for _ in range(5):
        held, release = asyncio.Event(), asyncio.Event()

        async def hold(held: asyncio.Event = held, release: asyncio.Event = release) -> None:
            async with broker._conn("holding a connection"):
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        queued = asyncio.create_task(broker._one("queued for the connection", "SELECT 1"))
        release.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        # far less than pool_timeout: the queued call was handed the connection
        assert await asyncio.wait_for(queued, POOL_TIMEOUT / 2) == (1,)
        await _returned(broker)
