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
import concurrent.futures
import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .brokers.base import Broker, NewTask, ResultStore
from .errors import BrokerError, Unsupported

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["BlockingCall", "Late", "Mailbox", "mailbox"]

log = logging.getLogger("offload.calls")

_LISTEN_TIMEOUT = 5.0  # seconds one wait_results call blocks before it listens again
_OUTAGE_PAUSE = 0.5  # seconds the listener waits after a broker error before trying again
_SENDERS = 16  # threads at most sending for blocking callers (a hung broker holds them)
_CLOSE_WAIT = 5.0  # seconds close() waits for sends under way before the App closes the broker
T = TypeVar("T")


@runtime_checkable
class BlockingCall(Protocol):
    """A broker that runs a blocking call's whole round trip on the calling thread: the
    send and the wait for the result together, on a connection of that thread, each
    step within the time given (Redis on a single server). A caller with such a broker
    uses a reply channel of its thread's (:meth:`Mailbox.thread_channel`) and no sender
    or listener thread."""

    @property
    def can_call_blocking(self) -> bool:
        """Whether :meth:`call_blocking` works with this broker's configuration."""

    def call_blocking(self, task: NewTask, reply_to: str, timeout: float) -> bytes | None:
        """Send ``task`` and wait for its result delivered to ``reply_to``, at most
        ``timeout`` seconds: the result, or None when the task was stored but its result
        did not come in time. TimeoutError when the send itself was not answered in
        time; the send's own errors otherwise."""


class Late(Exception):
    """A step of a call (starting the listener, sending, reading a stored result) did not
    finish in the time it was given; the caller turns it into DeadlineExceeded. Its own
    class, because the step itself may raise TimeoutError for another reason."""


def _within(fut: concurrent.futures.Future[T], timeout: float) -> T:
    """``fut``'s result, waiting at most ``timeout`` seconds; Late (after cancelling it,
    which stops it unless it started) when it is not done by then."""
    try:
        return fut.result(max(0.0, timeout))
    except concurrent.futures.TimeoutError:
        if fut.done():  # done just now, or it raised a TimeoutError of its own
            return fut.result()
        fut.cancel()
        raise Late from None


class _Senders:
    """Up to ``size`` daemon threads that run blocking sends, so that a caller stops
    waiting for its send at its deadline while a slow or unreachable broker holds the
    send. Daemon threads: a send stuck on a hung broker never keeps the program from
    exiting (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, size: int, name: str) -> None:
        self._size, self._name = size, name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((fut, fn, args))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if len(self._threads) < self._size:
                    name = f"{self._name}-{len(self._threads) + 1}"
                    thread = threading.Thread(target=self._run, name=name, daemon=True)
                    self._threads.append(thread)
                    thread.start()
        return fut

    def stop(self, timeout: float) -> None:
        """End the threads, waiting up to ``timeout`` seconds for sends under way (a send
        given up by its caller may still be running: the App must not close the broker
        under it). Jobs not started yet are dropped."""
        with self._lock:
            threads, self._size = list(self._threads), 0  # no new thread either
            self._stopped = True
        for _ in threads:
            self._jobs.put((None, None, None))
        end = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _run(self) -> None:
        while True:
            fut, fn, args = self._jobs.get()
            if fut is None:
                return
            if self._stopped:  # not started before stop(): dropped, its caller told so
                fut.cancel()
                continue
            if fut.set_running_or_notify_cancel():  # False: its caller gave up already
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller
                    fut.set_exception(exc)
            del fut, fn, args
            self._idle.release()


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
        self._senders: _Senders | None = None
        self._local = threading.local()  # this thread's reply channel
        self._threads = itertools.count(1)
        self._direct_of: Broker | None = None  # the facade last asked, and its answer:
        self._direct: BlockingCall | None = None

    # -- life cycle ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the listener is up (so :meth:`start` would return at once)."""
        return self._started.is_set() and self._error is None

    def start(self, timeout: float | None = None) -> None:
        """Start listening (once); returns when the listener is ready, so a result
        stored from now on reaches it. Raises what opening the broker raised, or
        :class:`Late` after ``timeout`` seconds (the listener goes on starting: a later
        call finds it ready)."""
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
        if not self._started.wait(None if timeout is None else max(0.0, timeout)):
            raise Late
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the listener and close its broker."""
        with self._lock:
            self._stopping = True
            loop, thread = self._loop, self._thread
            senders, self._senders = self._senders, None
        if senders is not None:
            senders.stop(_CLOSE_WAIT)
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

    # -- a blocking call on its own thread --------------------------------------------

    def direct(self) -> BlockingCall | None:
        """The App's blocking broker when a blocking call can send and wait on its own
        thread: one that can (:class:`BlockingCall`), opened and its queues declared
        already, so nothing but the call itself remains to wait for. None otherwise
        (the first call of an App goes through the sender thread and the listener,
        which keep its deadline while the broker opens)."""
        registry = self._registry
        facade = registry._facade
        if facade is None or not registry._declared:
            return None
        if facade is not self._direct_of:  # a protocol check costs ~30 us: once per facade
            ok = isinstance(facade, BlockingCall) and facade.can_call_blocking
            self._direct = facade if ok else None  # type: ignore[assignment]
            self._direct_of = facade
        return self._direct

    def thread_channel(self) -> str:
        """This thread's own reply channel (the process's channel and a number)."""
        channel: str | None = getattr(self._local, "channel", None)
        if channel is None:
            channel = self._local.channel = f"{self.channel}-{next(self._threads)}"
        return channel

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

    def submit(self, tasks: Sequence[NewTask]) -> concurrent.futures.Future[list[bool]]:
        """The App's blocking ``enqueue(tasks)`` on a sender thread: a caller can stop
        waiting for it (cancelled before it starts, it sends nothing; under way, it may
        still land, and workers drop it unrun past its deadline)."""
        senders = self._senders
        if senders is None:
            with self._lock:
                senders = self._senders
                if senders is None:
                    name = f"offload-send-{self._registry.name}"
                    senders = self._senders = _Senders(_SENDERS, name)
        return senders.submit(self._registry.enqueue, tasks)

    def send(self, tasks: Sequence[NewTask], timeout: float) -> list[bool]:
        """:meth:`submit`, waited for at most ``timeout`` seconds, then :class:`Late`."""
        return _within(self.submit(tasks), timeout)

    def fetch(self, key: str, timeout: float) -> bytes | None:
        """The stored result of ``key`` read by the listener's broker (None: not yet);
        :class:`Late` after ``timeout`` seconds."""
        loop, broker = self._loop, self._broker
        if loop is None or broker is None:
            raise Unsupported("the results listener is not running")
        store: ResultStore = broker  # type: ignore[assignment]
        return _within(asyncio.run_coroutine_threadsafe(store.get_result(key), loop), timeout)

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
