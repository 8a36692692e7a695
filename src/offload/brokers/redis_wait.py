"""How an idle Redis worker blocks: BLPOP on wake lists, timed on the client.

Redis checks blocking timeouts only every ``1/hz`` seconds (100 ms by default), too coarse
for a due eta, so the timer runs here. On a single server, ``CLIENT UNBLOCK`` ends the
BLPOP when the timer fires or the caller stops waiting, which keeps the connection; the
server's own BLPOP timeout is only a backstop. A token taken for a caller that stopped
waiting is pushed back for another idle worker.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from redis.cluster import key_slot

__all__ = ["SOCKET_TIMEOUT", "blpop", "blpop_cluster"]

#: the broker's socket timeout; a blocking wait never outlasts it
SOCKET_TIMEOUT = 30.0


async def blpop(r: Any, wake: list[str], timeout: float, cleanups: set[asyncio.Future]) -> None:
    """BLPOP on ``wake`` for ``timeout`` seconds (a single server). A background clean-up
    is added to ``cleanups`` when the caller is cancelled mid-wait; await them at close."""
    pool = r.connection_pool
    conn = await pool.get_connection()
    read = None
    try:
        await conn.send_packed_command(
            conn.pack_commands([("CLIENT", "ID"), ("BLPOP", *wake, timeout + 1.0)])
        )
        client_id = await conn.read_response()
        read = asyncio.ensure_future(conn.read_response(timeout=math.inf))
        done, _ = await asyncio.wait({read}, timeout=timeout)
        if not done:
            await r.execute_command("CLIENT", "UNBLOCK", client_id)
            await asyncio.wait_for(read, SOCKET_TIMEOUT)
        read.result()
    except asyncio.CancelledError:
        if read is None:
            await conn.disconnect()
            await pool.release(conn)
            raise
        # The worker stopped waiting (a slot freed). Finish the BLPOP in the background
        # instead of dropping the connection, and hand on any token it took meanwhile:
        # that wake-up was meant for some other idle worker.
        cleanup = asyncio.ensure_future(_abandon_blpop(r, conn, client_id, read))
        cleanups.add(cleanup)
        cleanup.add_done_callback(cleanups.discard)
        raise
    except BaseException:
        if read is not None and not read.done():
            read.cancel()
        await conn.disconnect()
        await pool.release(conn)
        raise
    else:
        await pool.release(conn)


async def _abandon_blpop(r: Any, conn: Any, client_id: int, read: asyncio.Future) -> None:
    try:
        if not read.done():
            await r.execute_command("CLIENT", "UNBLOCK", client_id)
        popped = await asyncio.wait_for(read, SOCKET_TIMEOUT)
        if popped:
            await r.execute_command("LPUSH", popped[0], popped[1])
    except BaseException:
        if not read.done():
            read.cancel()
        await conn.disconnect()
    finally:
        await r.connection_pool.release(conn)


async def blpop_cluster(r: Any, wake: list[str], timeout: float) -> None:
    """BLPOP on ``wake`` for ``timeout`` seconds on a cluster: one BLPOP per slot."""
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
