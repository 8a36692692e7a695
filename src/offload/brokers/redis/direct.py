"""A blocking call's whole round trip on the calling thread: the send and the wait for its
result written together on one connection of that thread (``call_blocking``).

A thread that calls gets a reply list of its own (``{P}:reply:<channel>``, a channel per
thread) and a connection of its own. The enqueue script and a ``BLMPOP`` on that list go
out in one write; the server runs the enqueue, then blocks the connection until the
worker pushes the result. So the caller pays one write and one read for the call, and no
hop to another thread: no sender thread for the send and no listener thread for the
result (those stay for async callers and handles, :mod:`offload.replies`).

Every step keeps the caller's deadline: connecting and the connection's handshake get the
time left as their socket timeouts, and each reply is read with the time left as its
timeout. A reply that does not come in time drops the connection (a blocked ``BLMPOP``
ends when its connection closes), so the next call connects afresh. Errors are redis-py's;
the broker maps them (:mod:`.faults`).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis as _redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from ..base import NewTask
from .scripts import CommandPacker, Script, enqueue_args

__all__ = ["DirectCalls", "SendLate"]

_PROBE_AFTER = 0.5  # seconds idle after which a connection is checked before use
_BACKSTOP = 1.0  # seconds the server's own BLMPOP timeout runs past the caller's deadline


class SendLate(Exception):
    """The enqueue's reply did not come within the deadline (the task may still land)."""


def _bulk(x: bytes | str) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return b"$%d\r\n%s\r\n" % (len(b), b)


@functools.lru_cache(maxsize=1024)
def _blmpop_tail(key: str) -> bytes:
    return b"".join(map(_bulk, ("1", key, "LEFT", "COUNT", "1")))


def _blmpop(key: str, timeout: float) -> bytes:
    """``BLMPOP timeout 1 key LEFT COUNT 1``, packed: one result at a time. All but the
    timeout is packed once per key (a thread's channel)."""
    return b"*7\r\n$6\r\nBLMPOP\r\n%s%s" % (_bulk(f"{timeout:.3f}"), _blmpop_tail(key))


def _closed(conn: Any) -> bool:
    """Whether an idle connection is unfit for a new command (the server closed it)."""
    try:
        return bool(conn.can_read())
    except (RedisConnectionError, OSError):
        return True


class DirectCalls:
    """Per-thread connections for :meth:`call`: opened on first use, closed with their
    thread or by :meth:`close`, forgotten in a forked child (its parent's sockets are not
    its own)."""

    def __init__(self, url: str, kwargs: dict[str, Any], connect_timeout: float) -> None:
        self._url, self._kwargs = url, kwargs
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._client: Any = None
        self._local = threading.local()
        # weakly: a thread that ends drops its connection, which closes its socket
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()
        self._packer = CommandPacker()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (s := ref()) and s._forget())

    def _conn(self, left: float) -> Any:
        if left <= 0:
            raise SendLate
        local = self._local
        conn = getattr(local, "conn", None)
        now = time.monotonic()
        if conn is None:
            with self._lock:
                if self._client is None:  # no I/O: the URL's settings, parsed once
                    self._client = _redis.Redis.from_url(
                        self._url, retry=Retry(NoBackoff(), 0), **self._kwargs
                    )
                pool = self._client.connection_pool
                conn = pool.connection_class(**pool.connection_kwargs)
                self._conns.add(conn)
            local.conn = conn
        elif now - local.used > _PROBE_AFTER and conn.is_connected and _closed(conn):
            conn.disconnect()  # idle a while, and the server closed it: reconnect
        local.used = now
        if not conn.is_connected:
            # connecting and the handshake (AUTH, SELECT, HELLO) within the deadline too
            conn.socket_connect_timeout = max(0.001, min(self._connect_timeout, left))
            conn.socket_timeout = max(0.001, left)
            try:
                conn.connect()
            except RedisTimeout as exc:
                raise SendLate from exc
        return conn

    def call(
        self,
        script: Script,
        keys: tuple[str, ...],
        task: NewTask,
        reply_key: str,
        mine: Callable[[bytes], bytes | None],
        timeout: float,
    ) -> bytes | None:
        """Enqueue ``task`` and wait for its result pushed to ``reply_key`` (the item that
        ``mine`` finds a value in), within ``timeout`` seconds. Returns the result; None
        when the enqueue was stored but the result did not come in time. Raises
        :class:`SendLate` when the enqueue's reply did not come in time (it may still be
        stored), redis-py's errors otherwise."""
        end = time.monotonic() + timeout
        packed = self._packer.evalsha(script, keys, enqueue_args([task]))  # may refuse a text
        for again in (True, False):
            conn = self._conn(end - time.monotonic())
            try:
                left = end - time.monotonic()
                conn.send_packed_command([packed + _blmpop(reply_key, left + _BACKSTOP)], False)
                conn.read_response(timeout=max(0.0, end - time.monotonic()))
            except RedisTimeout as exc:
                raise SendLate from exc  # the connection is dropped, its BLMPOP with it
            except NoScriptError:
                conn.disconnect()  # its BLMPOP is pending: drop it with the connection
                if not again:
                    raise
                # the server lost its scripts (a restart, SCRIPT FLUSH): load it, again
                conn = self._conn(end - time.monotonic())
                try:
                    conn.send_command("SCRIPT", "LOAD", script.source)
                    conn.read_response(timeout=max(0.0, end - time.monotonic()))
                except RedisTimeout as exc:
                    raise SendLate from exc
                continue
            except BaseException:
                conn.disconnect()  # a reply (the BLMPOP's) is pending: never reuse as is
                raise
            return self._result(conn, reply_key, mine, end)
        raise AssertionError("unreachable")

    def _result(
        self, conn: Any, reply_key: str, mine: Callable[[bytes], bytes | None], end: float
    ) -> bytes | None:
        """Read BLMPOP replies until ours: a result of an earlier call that gave up at its
        deadline may come first (it stays readable under its own key; dropped here)."""
        first = True
        while True:
            left = end - time.monotonic()
            try:
                if not first:
                    if left <= 0:
                        return None
                    conn.send_packed_command([_blmpop(reply_key, left + _BACKSTOP)], False)
                first = False
                popped = conn.read_response(timeout=max(0.0, left))
            except RedisTimeout:
                return None  # the connection is dropped: its BLMPOP ends with it
            except BaseException:
                conn.disconnect()
                raise
            if popped is None:  # the server's backstop: past our deadline too
                return None
            for item in popped[1]:
                value = mine(item)
                if value is not None:
                    return value

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns = weakref.WeakSet()
        self._client = None

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns), weakref.WeakSet()
            client, self._client = self._client, None
        self._local = threading.local()
        for c in conns:
            c.disconnect()
        if client is not None:
            client.close()
