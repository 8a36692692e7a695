"""A worker's claims and acks, run by a helper process of its own.

An ``async def`` handler and the worker's bookkeeping share one event loop, so one core:
every microsecond the broker's client spends on a claim or an ack is one the handlers do
not get. With a quick handler that is a large share. Measured on SQLite, whose statements
run in the worker's process, a task cost the worker about 20 µs of its own, 11 of them in
SQLite's claim and ack; on PostgreSQL psycopg's client work is about 6 of 19. A thread
cannot take that work off the loop's core (the GIL: the loop thread holds it almost
always, so the thread waits for it, and the real-body rate fell from 0.78x to 0.49x of the
floor); another process can.

So, where the machine has a core to spare, the worker starts one helper process that opens
its own broker on the same URL and runs the two calls that come once per batch, ``claim``
and ``ack``; everything else (waits, verdicts, heartbeats, enqueues from handlers) stays in
the worker. The loop then only writes a request and decodes the claimed tasks: about one
microsecond per task instead of ten.

What it changes for delivery: nothing. The helper holds no state of its own: a claim it
made is a lease in the broker like any other. If the helper dies, the calls in flight are
made again by the worker itself (an ack twice is harmless: a finished run wins; tasks the
lost claim had leased run again when their lease expires), so its death is never an
outage, and a later backlog starts a new helper. A broker error the helper meets (an
outage, a refusal) reaches the worker as the same error class. If the worker dies, the
helper reads end-of-file and exits. The helper ignores SIGINT and SIGTERM: a Ctrl-C
reaches the whole process group, and the worker's drain still needs it to send its acks.

The protocol and the helper's side are in :mod:`offload.brokers.helper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import errors
from ..brokers.base import Broker, Claimed, Lease
from ..brokers.helper import START_TIMEOUT, Frames, frame
from ..errors import BrokerError, BrokerUnavailable

__all__ = ["MODES", "HostedBroker", "hosted"]

log = logging.getLogger("offload.worker")

MODES = ("auto", "on", "off")


def hosted(broker: Broker, core: Any, queues: Sequence[str], mode: str) -> Broker:
    """``broker``, wrapped in a :class:`HostedBroker` when ``mode`` asks for it: ``"on"``
    for the SQLite and PostgreSQL brokers; ``"auto"`` for SQLite's alone, when the worker
    serves an ``async def`` task and the machine has a second core for the helper.

    PostgreSQL is not in ``"auto"``: measured on 2 cores with the database on the same
    machine, its server's work per task already fills the second core, and the helper
    lowered the rate (0.66x of the floor against 0.68x, medians of four rounds). Redis's
    client work per task is small (a script call per batch): nothing to gain."""
    kind = type(broker).__module__
    url = getattr(broker, "url", None)
    if mode == "off" or not isinstance(url, str) or os.name != "posix":
        return broker
    sqlite = kind.startswith("offload.brokers.sqlite")
    if mode == "on":
        if sqlite or kind.startswith("offload.brokers.postgres"):
            return HostedBroker(broker, url)  # type: ignore[return-value]
        return broker
    served = set(queues)
    if not sqlite or not any(tf.is_async and tf.queue in served for tf in core.tasks.values()):
        return broker
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return HostedBroker(broker, url) if cores >= 2 else broker  # type: ignore[return-value]


_head = msgspec.msgpack.Decoder(tuple[int, int, msgspec.Raw])
_claimed = msgspec.msgpack.Decoder(list[Claimed])
_error = msgspec.msgpack.Decoder(tuple[str, str])


class _HelperLost(BrokerUnavailable):
    """The helper process went away during a call: the call is made in-process instead."""


class HostedBroker:
    """``broker``, with :meth:`claim` and :meth:`ack` run by a helper process on its URL
    while the worker has a backlog. Every other attribute is the wrapped broker's.

    The helper starts when a claim comes back full (``MIN_BATCH`` or more asked: a
    backlog, where the loop's core is the limit) and stops when no claim has come back
    full for ``IDLE_AFTER`` seconds, so an idle worker is one process, as before. Until it
    answers, and after it is lost, the calls are the wrapped broker's own."""

    MIN_BATCH = 8  # a claim this large that comes back full means a backlog
    IDLE_AFTER = 30.0  # seconds without a full claim before the helper stops
    RESPAWN_AFTER = 10.0  # seconds after a helper was lost or failed to start (doubling)
    RESPAWN_MAX = 600.0  # seconds: the longest wait between two failed starts
    #: seconds a call may wait for the helper's answer before the helper counts as hung
    #: (killed; the call is made in-process): above SQLite's busy timeout (5 s) and a
    #: PostgreSQL claim's lock waits, far below a lease
    CALL_TIMEOUT = 30.0

    def __init__(self, broker: Broker, url: str) -> None:
        self._inner = broker
        self._url = url
        self._proc: subprocess.Popen[bytes] | None = None
        self._proto: Frames | None = None
        self._ready = False  # the helper answered its start-up: calls go to it
        self._pending: dict[int, tuple[asyncio.Future[Any], Any]] = {}
        self._rid = 0
        self._spawning: asyncio.Task[None] | None = None
        self._spawn_after = 0.0  # monotonic: no start before this
        self._busy_at = 0.0  # monotonic: the last claim that came back full
        self._closed = False
        self._failures = 0  # helper starts that failed in a row (the wait doubles)
        self._releasing: set[asyncio.Task[None]] = set()  # see _give_back
        #: claims and acks the helper made, and helpers started (for tests and stats)
        self.hosted_calls = 0
        self.starts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    # -- the two hosted calls ---------------------------------------------------------------

    async def claim(self, queues: Sequence[str], limit: int) -> list[Claimed]:
        got: list[Claimed] | None = None
        if self._ready and limit > 0 and queues:
            with contextlib.suppress(_HelperLost):
                got = await self._call("claim", [list(queues), limit], _claimed)
        if got is None:
            got = await self._inner.claim(queues, limit)
        now = time.monotonic()
        if limit >= self.MIN_BATCH and len(got) >= limit:
            self._busy_at = now
            if not self._ready and self._spawning is None and now >= self._spawn_after:
                self._spawning = asyncio.ensure_future(self._spawn())
        elif self._ready and not self._pending and now - self._busy_at > self.IDLE_AFTER:
            self._stop_idle()
        return got

    async def ack(self, leases: Sequence[Lease]) -> None:
        if self._ready and leases:
            try:
                await self._call("ack", list(leases), None)
                return
            except _HelperLost:
                pass  # an ack twice is harmless: a finished run wins
        await self._inner.ack(leases)

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        if self._ready and not self._pending and time.monotonic() - self._busy_at > self.IDLE_AFTER:
            self._stop_idle()
        await self._inner.wait(queues, timeout)

    async def _call(self, op: str, args: Any, decoder: Any) -> Any:
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            raise _HelperLost("no broker helper")
        self._rid += 1
        rid = self._rid
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, decoder)
        proto.transport.write(frame([rid, op, args]))
        # a timer, not wait_for(): this is once per batch on the worker's hot path
        timer = fut.get_loop().call_later(self.CALL_TIMEOUT, self._hung, fut, op)
        try:
            out = await fut
        finally:
            timer.cancel()
        self.hosted_calls += 1
        return out

    def _hung(self, fut: asyncio.Future[Any], op: str) -> None:
        if fut.done():
            return
        log.warning(
            "the worker's broker helper process did not answer a %s within %gs; killing "
            "it and making the call in the worker itself",
            op,
            self.CALL_TIMEOUT,
        )
        self._kill()  # its connection's loss fails every call in flight: _HelperLost
        self._spawn_after = time.monotonic() + self.RESPAWN_AFTER

    def _on_frame(self, body: bytes) -> None:
        rid, ok, raw = _head.decode(body)
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        fut, decoder = entry
        if fut.done():  # its caller was cancelled: what a claim took goes back at once
            if ok and decoder is _claimed:
                with contextlib.suppress(Exception):
                    self._give_back([c.lease for c in _claimed.decode(raw)])
            return
        try:
            if ok:
                fut.set_result(decoder.decode(raw) if decoder is not None else None)
            else:
                name, message = _error.decode(raw)
                cls = getattr(errors, name, None)
                if not (isinstance(cls, type) and issubclass(cls, BrokerError)):
                    cls = BrokerUnavailable
                fut.set_exception(cls(message))
        except Exception as exc:  # a reply this worker cannot read: it would recur
            fut.set_exception(_HelperLost(f"unreadable reply: {exc}"))
            log.error(
                "the worker's broker helper process sent a reply the worker cannot read "
                "(%s); it stays off, and the tasks it had just claimed run again after "
                "their lease",
                exc,
            )
            self._spawn_after = float("inf")
            self._stop_helper()

    def _give_back(self, leases: list[Lease]) -> None:
        """Release, uncounted, what a claim took for a caller who stopped waiting (else
        those tasks would wait for their lease to expire)."""
        if not leases:
            return
        task = asyncio.ensure_future(self._inner.release(leases))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _on_lost(self, exc: Exception | None) -> None:
        self._proto, self._ready = None, False
        pending, self._pending = self._pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(_HelperLost("the broker helper process exited"))
        if self._proc is not None and not self._closed:
            if self._proc.poll() is None:  # not asked to stop, but its socket closed
                self._proc.kill()
            log.warning(
                "the worker's broker helper process exited (status %s); claims and acks "
                "are made in the worker itself until it is started again",
                self._proc.wait(),
            )
            self._proc = None
            self._spawn_after = time.monotonic() + self.RESPAWN_AFTER

    # -- the helper's life ------------------------------------------------------------------

    async def _spawn(self) -> None:
        """Start the helper; on failure say why, once per attempt, and stay in-process."""
        try:
            await self._start()
        except Exception as exc:
            self._kill()
            wait = min(self.RESPAWN_MAX, self.RESPAWN_AFTER * 2**self._failures)
            self._failures += 1
            self._spawn_after = time.monotonic() + wait
            log.warning(
                "could not start the worker's broker helper process (%s); claims and acks "
                "stay in the worker itself, the next try in %gs at the earliest",
                exc,
                wait,
            )
        else:
            self._failures = 0
        finally:
            self._spawning = None

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        import offload

        root = os.path.dirname(os.path.dirname(os.path.abspath(offload.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "offload.brokers.helper", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        ready = loop.create_future()
        self._pending[0] = (ready, None)
        _, proto = await loop.create_unix_connection(
            lambda: Frames(self._on_frame, self._on_lost), sock=mine
        )
        self._proto = proto
        proto.transport.write(frame(self._url))  # type: ignore[union-attr]
        await asyncio.wait_for(ready, START_TIMEOUT)
        if self._closed:
            raise BrokerUnavailable("the broker closed meanwhile")
        self._ready = True
        self.starts += 1
        log.info("broker helper process %d started: claims and acks go through it", self._proc.pid)

    def _stop_idle(self) -> None:
        """No backlog for IDLE_AFTER seconds: the worker is one process again."""
        if self._proc is not None:
            log.info(
                "broker helper process %d stopped: no backlog for %gs",
                self._proc.pid,
                self.IDLE_AFTER,
            )
        self._stop_helper()

    def _stop_helper(self) -> None:
        """Ask the helper to exit (it reads end-of-file); nothing is in flight only when
        ``_pending`` is empty, and what is in flight fails over to the worker itself."""
        self._ready = False
        proc, self._proc = self._proc, None
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        if proc is not None:
            _reap_later(proc)

    def _kill(self) -> None:
        """:meth:`_stop_helper`, not waiting for the helper to hear it (hung, or not
        started)."""
        proc = self._proc
        self._stop_helper()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    async def close(self) -> None:
        self._closed = True
        if self._spawning is not None:
            self._spawning.cancel()
            with contextlib.suppress(BaseException):
                await self._spawning
        proc = self._proc
        self._stop_helper()
        if proc is not None:
            for _ in range(250):  # it closes its broker first: at most 5 s
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            else:
                proc.kill()
                proc.wait()
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        await self._inner.close()


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    """Collect an exiting helper's status without blocking the loop (no zombie left)."""

    def reap() -> None:
        if proc.poll() is None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(0.1, reap)

    reap()
