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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.cluster import key_slot
from redis.exceptions import ConnectionError as _ConnError

__all__ = ["SOCKET_TIMEOUT", "BlockingConnection", "blpop", "blpop_cluster", "probe", "uncut"]

#: the broker's socket timeout; a blocking wait never outlasts it
SOCKET_TIMEOUT = 30.0


Popped = tuple[bytes, bytes] | None  # (key, value), or None on a timeout


async def probe(conn: Any) -> bool:
    """Whether an idle connection is unfit for a new command: the server closed it (a
    restart, a client timeout) or bytes are pending. redis-py *raises* on a closed one
    (at EOF, or reset): that too means "reconnect", never an outage of its own, or a
    connection kept outside the pool would fail every call after a restart."""
    can_read = getattr(conn, "can_read", None) or conn.can_read_destructive  # redis-py < 8
    try:
        return await can_read()
    except (_ConnError, OSError):
        return True


async def uncut(
    call: Coroutine[Any, Any, Any],
    cleanups: set[asyncio.Future],
    then: Callable[[Any], Awaitable[Any]] | None = None,
) -> Any:
    """``await call``, in a task of its own that a cancel of the caller does not reach.

    A worker cancels its wait whenever a slot frees. redis-py drops a connection whose
    reply a cancel cut off (it cannot tell what was left unread), and puts a connection
    whose handshake a cancel cut off back in its pool with the reply unread: either way a
    reconnect. A call whose caller has gone finishes in the background instead (added to
    ``cleanups``, awaited at close), and ``then`` gets its result (say, to give back a
    connection nobody will use)."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        rest = asyncio.ensure_future(_finish(task, then))
        cleanups.add(rest)
        rest.add_done_callback(cleanups.discard)
        raise


async def _finish(task: asyncio.Future, then: Callable[[Any], Awaitable[Any]] | None) -> None:
    try:
        result = await task
    except Exception:
        return  # nobody awaits it: an outage shows at the next call
    if then is not None:
        await then(result)


class BlockingConnection:
    """The connection a broker's waits block on, kept outside redis-py's pool: a checkout
    there (lock, observability hooks) costs more than the wait's own work. A wait that
    finds it busy (an abandoned BLPOP still finishing) takes one from the pool instead.

    That borrow is :func:`uncut`: a new connection's handshake cut short by a cancel would
    go back to the pool with the server's reply unread, and its next user would drop it
    and connect again. A borrow whose waiter has gone gives the connection back."""

    def __init__(self, r: Any) -> None:
        self._pool = r.connection_pool
        self._conn: Any = None
        self._busy = False

    async def get(self, cleanups: set[asyncio.Future]) -> Any:
        if self._busy:  # a failed borrow is back in the pool already (get_connection)
            return await uncut(self._pool.get_connection(), cleanups, self._pool.release)
        self._busy = True
        conn = self._conn
        try:
            if conn is None:
                conn = self._conn = self._pool.connection_class(**self._pool.connection_kwargs)
            elif conn.is_connected and await probe(conn):
                await conn.disconnect()  # closed by the server: the next send connects again
        except BaseException:
            self._busy = False
            raise
        return conn

    async def release(self, conn: Any) -> None:
        if conn is self._conn:
            self._busy = False
        else:
            await self._pool.release(conn)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()


async def blpop(
    r: Any,
    conns: BlockingConnection,
    keys: list[str],
    timeout: float,
    cleanups: set[asyncio.Future],
    on_abandoned: Callable[[tuple[bytes, bytes]], Awaitable[None]],
) -> Popped:
    """BLPOP on ``keys`` for ``timeout`` seconds (a single server). A background clean-up
    is added to ``cleanups`` when the caller is cancelled mid-wait; await them at close.
    ``on_abandoned`` gets what that clean-up popped.

    The reply is read right here, not in a task of its own, so a wake-up reaches the caller
    on the very loop turn its bytes arrive. That is safe to cancel: reads pass
    ``disconnect_on_error=False``, and a cancelled read leaves what it had received in the
    parser's buffer for the clean-up to finish.
    """
    conn = await conns.get(cleanups)
    # Sent from a task the caller's cancellation cannot interrupt halfway: once the BLPOP
    # is out, it may pop at any moment, and only reading its reply keeps what it popped.
    packed = conn.pack_commands([("CLIENT", "ID"), ("BLPOP", *keys, timeout + 1.0)])
    send = asyncio.ensure_future(conn.send_packed_command(packed))
    ident: list[int] = []
    try:
        await asyncio.shield(send)
        ident.append(await conn.read_response(disconnect_on_error=False))
        popped = await conn.read_response(timeout=timeout, disconnect_on_error=False)
        if popped is None:  # the client-side timer: end the BLPOP, keep the connection
            await r.execute_command("CLIENT", "UNBLOCK", ident[0])
            popped = await conn.read_response(disconnect_on_error=False)
    except asyncio.CancelledError:
        # The worker stopped waiting (a slot freed). Finish the BLPOP in the background
        # instead of dropping the connection, and pass on whatever it took meanwhile.
        cleanup = asyncio.ensure_future(_abandon_blpop(r, conns, conn, send, ident, on_abandoned))
        cleanups.add(cleanup)
        cleanup.add_done_callback(cleanups.discard)
        raise
    except BaseException:
        await conn.disconnect()
        await conns.release(conn)
        raise
    await conns.release(conn)
    return tuple(popped) if popped else None


async def _abandon_blpop(
    r: Any,
    conns: BlockingConnection,
    conn: Any,
    send: asyncio.Future,
    ident: list[int],
    on_abandoned: Callable[[tuple[bytes, bytes]], Awaitable[None]],
) -> None:
    try:
        await send
        if not ident:
            ident.append(await conn.read_response(disconnect_on_error=False))
        # The BLPOP is still blocked, or its reply is on the way: a second UNBLOCK of the
        # same client is a no-op, so whichever it is, one more reply is all there is.
        await r.execute_command("CLIENT", "UNBLOCK", ident[0])
        popped = await conn.read_response(disconnect_on_error=False)
        if popped:
            await on_abandoned(tuple(popped))
    except BaseException:
        await conn.disconnect()
    finally:
        await conns.release(conn)


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
