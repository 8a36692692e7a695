"""The reply channel of a caller process and the one listener that serves it
(:mod:`offload.calls` explains the whole path of a result).

Nothing starts until the first call of an App in a process: then a daemon thread with an
event loop of its own opens a broker of its own, starts listening on a random channel
name, and hands every delivered result to the caller waiting for its key, waking a thread
(an Event) or a coroutine (a Future on its own loop). So any number of concurrent calls,
from threads or from asyncio tasks, share one blocked broker connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING

from .brokers.base import Broker, ResultStore
from .errors import BrokerError, Unsupported

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Mailbox", "mailbox"]

log = logging.getLogger("offload.calls")

_LISTEN_TIMEOUT = 5.0  # seconds one wait_results call blocks before it listens again
_OUTAGE_PAUSE = 0.5  # seconds the listener waits after a broker error before trying again


class _Waiter:
    """One caller waiting for one key: a thread (an Event) or a coroutine (a Future)."""

    __slots__ = ("event", "future", "loop", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.value: bytes | None = None
        self.loop = loop
        self.event: threading.Event | None = None
        self.future: asyncio.Future[bytes] | None = None
        if loop is None:
            self.event = threading.Event()
        else:
            self.future = loop.create_future()

    def set(self, value: bytes) -> None:
        self.value = value
        if self.event is not None:
            self.event.set()
        elif self.loop is not None and self.future is not None:
            fut = self.future
            try:
                self.loop.call_soon_threadsafe(_resolve, fut, value)
            except RuntimeError:
                pass  # the caller's loop is closed: nobody waits any more


def _resolve(fut: asyncio.Future[bytes], value: bytes) -> None:
    if not fut.done():
        fut.set_result(value)


class Mailbox:
    """An App's reply channel in this process and the one listener that serves it.

    Nothing starts until the first call: then a daemon thread opens a broker of its own,
    starts listening, and hands every delivered result to the caller waiting for its key.
    A result nobody waits for any more is dropped here (it stays readable from the broker
    until its TTL ends). After ``fork`` the child makes a new channel and listener."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._pid = os.getpid()
        self.channel = os.urandom(16).hex()
        self._waiters: dict[str, list[_Waiter]] = {}
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Broker | None = None
        self._error: BaseException | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (once); returns when the listener is ready, so a result
        stored from now on reaches it. Raises what opening the broker raised."""
        if self._started.is_set() and self._error is None:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._error is not None:
                self._error = None
                self._started.clear()
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._main, name=f"offload-replies-{self._registry.name}", daemon=True
                )
                self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the listener and close its broker."""
        with self._lock:
            self._stopping = True
            loop, thread = self._loop, self._thread
        task = self._task
        if loop is not None and task is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # its loop closed meanwhile: it is done
                loop.call_soon_threadsafe(task.cancel)
            thread.join(timeout=5)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._task = loop.create_task(self._listen())
            loop.run_until_complete(self._task)
        except BaseException as exc:  # reported to the caller by start()
            if not self._started.is_set():
                self._error = exc
        finally:
            self._started.set()
            loop.close()

    async def _listen(self) -> None:
        broker = self._registry.new_broker()
        await broker.open()
        try:
            if not isinstance(broker, ResultStore) or not broker.capabilities.results:
                raise Unsupported(
                    f"broker {self._registry.broker_url!r} cannot store results, so calls "
                    "cannot get one back; use a broker with Capabilities(results=True) "
                    "(SQLite, Redis, PostgreSQL) or send() without waiting"
                )
            await broker.wait_results(self.channel, 0)  # listening from here on
            self._broker = broker
            self._started.set()
            while not self._stopping:
                try:
                    got = await broker.wait_results(self.channel, _LISTEN_TIMEOUT)
                except asyncio.CancelledError:
                    raise
                except BrokerError as exc:
                    log.warning("waiting for results: %s; listening again shortly", exc)
                    await asyncio.sleep(_OUTAGE_PAUSE)
                    continue
                for key, value in got:
                    self._deliver(key, value)
        except asyncio.CancelledError:
            pass
        finally:
            self._broker = None
            try:
                await broker.close()
            except Exception:  # closing must not hide why we stopped
                log.debug("closing the results listener's broker failed", exc_info=True)

    # -- waiting --------------------------------------------------------------------------

    def expect(self, key: str, loop: asyncio.AbstractEventLoop | None = None) -> _Waiter:
        """Register a waiter for ``key`` (before the task is sent, so no result can come
        before anyone waits for it)."""
        waiter = _Waiter(loop)
        with self._lock:
            self._waiters.setdefault(key, []).append(waiter)
        return waiter

    def forget(self, key: str, waiter: _Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is not None:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]

    def _deliver(self, key: str, value: bytes) -> None:
        with self._lock:
            waiters = self._waiters.pop(key, ())
        for w in waiters:
            w.set(value)

    def fetch(self, key: str) -> bytes | None:
        """The stored result of ``key`` read by the listener's broker (None: not yet)."""
        loop, broker = self._loop, self._broker
        if loop is None or broker is None:
            raise Unsupported("the results listener is not running")
        store: ResultStore = broker  # type: ignore[assignment]
        return asyncio.run_coroutine_threadsafe(store.get_result(key), loop).result()

    async def fetch_async(self, key: str) -> bytes | None:
        loop, broker = self._loop, self._broker
        if loop is None or broker is None:
            raise Unsupported("the results listener is not running")
        store: ResultStore = broker  # type: ignore[assignment]
        fut = asyncio.run_coroutine_threadsafe(store.get_result(key), loop)
        return await asyncio.wrap_future(fut)


def mailbox(registry: Registry) -> Mailbox:
    """The registry's mailbox in this process (a new one after a fork)."""
    box: Mailbox | None = getattr(registry, "mailbox", None)
    if box is None or box._pid != os.getpid():
        with registry.lock:
            box = getattr(registry, "mailbox", None)
            if box is None or box._pid != os.getpid():
                box = registry.mailbox = Mailbox(registry)
    return box
