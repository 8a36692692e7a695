"""The broker helper process a worker may start (:mod:`offload.worker.brokerhost`):
it opens its own broker on the worker's URL and runs the worker's claims and acks.

It lives here, not under ``offload.worker``, so that starting it imports the broker and
little else (about a tenth of a second sooner): the worker starts it when a backlog
appears, and until it answers the worker claims for itself.

Frames on the socket pair are an 8-byte little-endian length and a msgpack body:
``[rid, op, args]`` from the worker (``op`` ``"claim"``: ``[queues, limit]``; ``"ack"``:
a list of leases), ``[rid, ok, result]`` back (``ok`` 0: ``[error class, message]``).
The first frame the worker sends is the broker URL (not on the command line, where a
password would show in ``ps``); the helper answers ``[0, 1, null]`` once its broker is
open, or ``[0, 0, [error class, message]]`` and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import struct
import sys
from typing import Any

import msgspec

from ..errors import BrokerError, BrokerUnavailable
from .base import Broker, Lease

__all__ = ["START_TIMEOUT", "Frames", "frame", "main"]

# 8 bytes: offload sets no limit on a payload, and a claim of 64 large ones must fit (a
# frame the worker could not take would strand its tasks until their lease expired)
_LEN = struct.Struct("<Q")
START_TIMEOUT = 30.0  # seconds for the helper to import and open its broker


_encode = msgspec.msgpack.Encoder().encode


def frame(obj: Any) -> bytes:
    body = _encode(obj)
    return _LEN.pack(len(body)) + body


class Frames(asyncio.Protocol):
    """Splits the byte stream into frames and hands each body to ``on_frame``."""

    def __init__(self, on_frame: Any, on_lost: Any) -> None:
        self._buf = bytearray()
        self._on_frame = on_frame
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start = 0
        end = len(buf)
        while end - start >= 8:
            (n,) = _LEN.unpack_from(buf, start)
            if end - start - 8 < n:
                break
            self._on_frame(bytes(buf[start + 8 : start + 8 + n]))
            start += 8 + n
        if start:
            del buf[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


async def _serve(sock: socket.socket) -> None:
    from . import broker_from_url

    loop = asyncio.get_running_loop()
    lost = loop.create_future()
    broker: Broker | None = None
    tasks: set[asyncio.Task[None]] = set()
    leases = msgspec.msgpack.Decoder(list[Lease])
    request = msgspec.msgpack.Decoder(tuple[int, str, msgspec.Raw])
    claim_args = msgspec.msgpack.Decoder(tuple[list[str], int])
    url_frame = msgspec.msgpack.Decoder(str)
    opened = loop.create_future()
    started: list[bool] = []

    async def handle(rid: int, op: str, raw: msgspec.Raw) -> None:
        try:
            await opened
            assert broker is not None
            if op == "claim":
                queues, limit = claim_args.decode(raw)
                out: Any = await broker.claim(queues, limit)
            elif op == "ack":
                await broker.ack(leases.decode(raw))
                out = None
            else:
                raise BrokerUnavailable(f"unknown request {op!r}")
            reply = frame([rid, 1, out])
        except BrokerError as exc:
            reply = frame([rid, 0, [type(exc).__name__, str(exc)]])
        except Exception as exc:  # a bug of the helper's: an outage the worker waits out
            reply = frame([rid, 0, ["BrokerUnavailable", f"broker helper: {exc!r}"]])
        if proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(reply)

    def on_frame(body: bytes) -> None:
        if not started:
            started.append(True)
            t = loop.create_task(_open(body))
        else:
            rid, op, raw = request.decode(body)
            t = loop.create_task(handle(rid, op, raw))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    async def _open(body: bytes) -> None:
        nonlocal broker
        try:
            broker = broker_from_url(url_frame.decode(body))
            await broker.open()
        except Exception as exc:
            opened.set_exception(exc)
            opened.exception()  # retrieved: the worker is told below, not the log
            name = type(exc).__name__ if isinstance(exc, BrokerError) else "BrokerUnavailable"
            proto.transport.write(frame([0, 0, [name, str(exc)]]))  # type: ignore[union-attr]
            proto.transport.close()  # type: ignore[union-attr]
            return
        opened.set_result(None)
        proto.transport.write(frame([0, 1, None]))  # type: ignore[union-attr]

    def on_lost(exc: Exception | None) -> None:
        if not lost.done():
            lost.set_result(None)

    _, proto = await loop.create_unix_connection(lambda: Frames(on_frame, on_lost), sock=sock)
    await lost
    for t in list(tasks):
        t.cancel()
    if broker is not None and opened.done() and not opened.cancelled() and not opened.exception():
        with contextlib.suppress(Exception):
            await broker.close()


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the worker ends it (EOF), after its drain
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    run(_serve(sock))


if __name__ == "__main__":
    main()
