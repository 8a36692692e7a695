"""How an idle Redis worker blocks: BLPOP on wake lists, timed on the client.

Redis checks blocking timeouts only every ``1/hz`` seconds (100 ms by default), too coarse
for a due eta, so the timer runs here. On a single server, ``CLIENT UNBLOCK`` ends the
BLPOP when the timer fires or the caller stops waiting, which keeps the connection; the
server's own BLPOP timeout is only a backstop. What a BLPOP pops for a caller that
stopped waiting goes to ``on_abandoned``: a wake-up token is pushed back for another idle
worker, a hand-off kept for the worker's next claim.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

from redis.cluster import key_slot

__all__ = ["SOCKET_TIMEOUT", "blpop", "blpop_cluster"]

#: the broker's socket timeout; a blocking wait never outlasts it
SOCKET_TIMEOUT = 30.0


Popped = tuple[bytes, bytes] | None  # (key, value), or None on a timeout


async def blpop(
    r: Any,
    keys: list[str],
    timeout: float,
    cleanups: set[asyncio.Future],
    on_abandoned: Callable[[tuple[bytes, bytes]], Awaitable[None]],
) -> Popped:
    """BLPOP on ``keys`` for ``timeout`` seconds (a single server). A background clean-up
    is added to ``cleanups`` when the caller is cancelled mid-wait; await them at close.
    ``on_abandoned`` gets what that clean-up popped."""
    pool = r.connection_pool
    conn = await pool.get_connection()
    ident: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def exchange() -> Any:
        # Sent and read in a task of its own, so that a cancelled caller never interrupts
        # it: once the BLPOP is sent it may pop at any moment, and only reading the reply
        # keeps what it popped.
        await conn.send_packed_command(
            conn.pack_commands([("CLIENT", "ID"), ("BLPOP", *keys, timeout + 1.0)])
        )
        ident.set_result(await conn.read_response())
        return await conn.read_response(timeout=math.inf)

    read = asyncio.ensure_future(exchange())
    try:
        done, _ = await asyncio.wait({read}, timeout=timeout)
        if not done:
            await _unblock(r, ident, read)
        popped = read.result()
    except asyncio.CancelledError:
        # The worker stopped waiting (a slot freed). Finish the BLPOP in the background
        # instead of dropping the connection, and pass on whatever it took meanwhile.
        cleanup = asyncio.ensure_future(_abandon_blpop(r, conn, ident, read, on_abandoned))
        cleanups.add(cleanup)
        cleanup.add_done_callback(cleanups.discard)
        raise
    except BaseException:
        if not read.done():
            read.cancel()
        await conn.disconnect()
        await pool.release(conn)
        raise
    else:
        await pool.release(conn)
        return tuple(popped) if popped else None


async def _unblock(r: Any, ident: asyncio.Future[int], read: asyncio.Future) -> None:
    """End the BLPOP of ``read`` early (CLIENT UNBLOCK) and wait for its reply."""
    await asyncio.wait({ident, read}, timeout=SOCKET_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if not read.done() and ident.done():
        await r.execute_command("CLIENT", "UNBLOCK", ident.result())
    await asyncio.wait_for(asyncio.shield(read), SOCKET_TIMEOUT)


async def _abandon_blpop(
    r: Any,
    conn: Any,
    ident: asyncio.Future[int],
    read: asyncio.Future,
    on_abandoned: Callable[[tuple[bytes, bytes]], Awaitable[None]],
) -> None:
    try:
        await _unblock(r, ident, read)
        popped = read.result()
        if popped:
            await on_abandoned(tuple(popped))
    except BaseException:
        if not read.done():
            read.cancel()
        await conn.disconnect()
    finally:
        await r.connection_pool.release(conn)


async def blpop_cluster(r: Any, wake: list[str], timeout: float) -> None:
    """BLPOP on ``wake`` for ``timeout`` seconds on a cluster: one BLPOP per slot. (A
    cancelled BLPOP here drops its connection and maybe what it popped, so on a cluster
    workers never park for hand-offs and only wake-up tokens are waited for.)"""
    # BLPOP's keys must share a slot: block on each slot's keys at once, first wins.
    slots: dict[int, list[str]] = {}
    for k in wake:
        slots.setdefault(key_slot(k.encode()), []).append(k)
    waits = [
        asyncio.ensure_future(r.execute_command("BLPOP", *ks, timeout + 1.0))
        for ks in slots.values()
    ]
    try:
        # The timer runs here too; a cancelled BLPOP drops its connection.
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for d in done:
            d.result()
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
