"""The connections push deliveries reuse, one pool per event loop.

Why not httpx's pool: it re-examines every connection it holds (a socket poll each) whenever
a request starts or ends, and a request through it goes around the event loop about fifteen
times; at a worker's 32 deliveries in flight that held a worker to a third of what a plain
httpx loop posts. A delivery needs less: it takes one connection for one request and gives
it back. So idle connections wait in a list per destination, the last one used on top, and
only the connection taken is checked (closed by the server, or idle past ``KEEPALIVE``).
The protocol, TLS and errors stay httpcore's (httpx's own engine), one
``httpcore.AsyncHTTPConnection`` per socket; nothing reads the environment.

A destination is the scheme, the address the SSRF guard checked and the port, and for https
also the name the certificate was verified for and the CA bundle it was verified with: a
connection whose certificate was checked for one name is never reused for another.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from typing import Any

__all__ = ["KEEPALIVE", "MAX_IDLE", "Destination", "Pool", "pool"]

KEEPALIVE = 5.0  # seconds an idle connection is kept (httpx's default)
MAX_IDLE = 64  # idle connections kept per destination; more are closed
_SWEEP = 5.0  # seconds between looks at every destination's idle connections

#: scheme, checked address, port, TLS server name ("" for http), CA bundle (None: the roots)
Destination = tuple[str, str, int, str, str | None]


class Pool:
    """Idle connections by destination. Not thread-safe: one per event loop (:func:`pool`)."""

    __slots__ = ("_idle", "_sweep_at")

    def __init__(self) -> None:
        self._idle: dict[Destination, list[Any]] = {}
        self._sweep_at = 0.0

    def idle(self, to: Destination) -> int:
        """How many idle connections to ``to`` wait for a request."""
        return len(self._idle.get(to, ()))

    async def request(
        self,
        to: Destination,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        tls: ssl.SSLContext | None,
        limit: int,
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send one request to ``to`` on an idle connection or a new one and read at most
        ``limit`` bytes of the response's body; returns its status and headers. Raises
        httpcore's errors (``ConnectError`` and the other ``NetworkError``, ``ProtocolError``).
        A connection that an error or a cancellation interrupted, or whose response was
        not read to its end, is closed, never reused."""
        import httpcore

        scheme, address, port, name, _ = to
        conn = await self._take(to)
        if conn is None:
            origin = httpcore.Origin(scheme.encode(), address.encode(), port)
            conn = httpcore.AsyncHTTPConnection(origin, ssl_context=tls, keepalive_expiry=KEEPALIVE)
        url = httpcore.URL(scheme=scheme.encode(), host=address.encode(), port=port, target=target)
        request = httpcore.Request(
            method,
            url,
            headers=headers,
            content=body,
            extensions={"sni_hostname": name} if name else {},
        )
        try:
            response = await conn.handle_async_request(request)
            try:
                read = 0
                async for chunk in response.aiter_stream():
                    read += len(chunk)
                    if read > limit:
                        break  # the rest is never read: httpcore closes the connection
            finally:
                await response.aclose()
        except BaseException:
            await conn.aclose()
            raise
        if conn.is_idle():
            idle = self._idle.setdefault(to, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
            else:
                await conn.aclose()
        return response.status, response.headers

    async def _take(self, to: Destination) -> Any:
        now = time.monotonic()
        if now >= self._sweep_at:
            self._sweep_at = now + _SWEEP
            await self._sweep()
        idle = self._idle.get(to)
        while idle:
            conn = idle.pop()
            # has_expired: idle past KEEPALIVE, or readable while idle (the server closed it)
            if conn.is_idle() and not conn.has_expired():
                return conn
            await conn.aclose()
        return None

    async def _sweep(self) -> None:
        """Close idle connections that expired, so destinations no longer sent to do not
        keep sockets open (the server has usually closed its side already)."""
        for to, idle in list(self._idle.items()):
            stale = [c for c in idle if not c.is_idle() or c.has_expired()]
            if stale:
                idle[:] = [c for c in idle if c not in stale]
            if not idle:
                del self._idle[to]
            for conn in stale:
                await conn.aclose()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pool] = weakref.WeakKeyDictionary()


def pool() -> Pool:
    """The running loop's pool (its connections are bound to the loop)."""
    loop = asyncio.get_running_loop()
    got = _POOLS.get(loop)
    if got is None:
        got = _POOLS[loop] = Pool()
    return got
