"""The Redis broker's synchronous producer path: the same Lua scripts, by SHA, from threads.

The App's synchronous facade sends tasks through here, so a plain (non-async) program pays
one round trip per send and no event-loop hop. The scripts stay the single source of truth;
this module only moves bytes: each thread keeps one connection (no pool checkout per call),
and the constant head of each ``EVALSHA`` (script SHA and the queue's keys) is encoded once.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis as _redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.retry import Retry

from ..base import NewTask
from .scripts import CommandPacker, Script, enqueue_args, enqueue_calls

__all__ = ["SyncScripts"]

_PROBE_AFTER = 0.5  # seconds idle after which a connection is checked before use


def _closed(conn: Any) -> bool:
    """Whether an idle connection is unfit for a new command. redis-py raises on one the
    server closed: that means "reconnect", not an outage, or the thread's connection would
    fail every send after a server restart."""
    try:
        return bool(conn.can_read())
    except (RedisConnectionError, OSError):
        return True


class SyncScripts:
    """Runs scripts from any thread; connections are opened on first use."""

    def __init__(self, url: str, cluster: bool, kwargs: dict[str, Any]) -> None:
        self._url, self._cluster, self._kwargs = url, cluster, kwargs
        self._client: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[Any] = []  # every thread's connection, closed by close()
        # A forked child must not share its parent's sockets: it starts afresh.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (s := ref()) and s._forget())
        self._packer = CommandPacker()

    def _get(self) -> Any:
        with self._lock:
            if self._client is None:
                if self._cluster:
                    self._client = _redis.RedisCluster.from_url(self._url, **self._kwargs)
                else:
                    # No blind retries: the caller sees the failure and decides.
                    self._client = _redis.Redis.from_url(
                        self._url, retry=Retry(NoBackoff(), 0), **self._kwargs
                    )
            return self._client

    def _conn(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        now = time.monotonic()
        if conn is None:
            pool = self._get().connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            with self._lock:
                self._conns.append(conn)
            local.conn = conn
        elif now - local.used > _PROBE_AFTER and conn._sock is not None and _closed(conn):
            # Idle for a while: the server may have closed it (restart, client timeout).
            # Probing costs a system call, so busy senders skip it.
            conn.disconnect()
        local.used = now
        return conn

    def eval(self, script: Script, keys: tuple[str, ...], args: Sequence[Any]) -> Any:
        """EVALSHA, loading the script on NOSCRIPT. Raises redis-py's errors."""
        if self._cluster:
            r = self._get()
            cmd = ("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                return r.execute_command(*cmd)
            except NoScriptError:
                r.script_load(script.source)
                return r.execute_command(*cmd)
        packed = self._packer.evalsha(script, keys, args)
        conn = self._conn()
        try:
            conn.send_packed_command([packed])
            try:
                return conn.read_response()
            except NoScriptError:
                conn.send_command("SCRIPT", "LOAD", script.source)
                conn.read_response()
                conn.send_packed_command([packed])
                return conn.read_response()
        except BaseException:
            conn.disconnect()  # a reply may be pending: never reuse this connection as is
            raise

    def eval_many(self, calls: Sequence[tuple[Script, tuple[str, ...], Sequence[Any]]]) -> list:
        """Several EVALSHAs in one round trip, replies in order; a script the server lost
        (NOSCRIPT: it did not run) is loaded and run again. Raises redis-py's errors."""
        if self._cluster or len(calls) == 1:
            return [self.eval(*c) for c in calls]
        pack = self._packer.evalsha
        conn = self._conn()
        try:
            conn.send_packed_command([pack(s, k, a) for s, k, a in calls])
            out: list = []
            for _ in calls:
                try:
                    out.append(conn.read_response())
                except NoScriptError as exc:
                    out.append(exc)
            for i, reply in enumerate(out):
                if isinstance(reply, NoScriptError):
                    s, k, a = calls[i]
                    conn.send_command("SCRIPT", "LOAD", s.source)
                    conn.read_response()
                    conn.send_packed_command([pack(s, k, a)])
                    out[i] = conn.read_response()
            return out
        except BaseException:
            conn.disconnect()  # replies may be pending: never reuse this connection as is
            raise

    def enqueue(
        self, script: Script, keys_of: Callable[[str], tuple[str, ...]], tasks: Sequence[NewTask]
    ) -> list[bool]:
        """The enqueue script for ``tasks``: one call per queue (per chunk of a large batch),
        on this thread's connection. Raises redis-py's errors."""
        if len(tasks) == 1:  # the one-by-one send: nothing to group
            return [bool(self.eval(script, keys_of(tasks[0].queue), enqueue_args(tasks))[0])]
        out = [False] * len(tasks)
        plan = enqueue_calls(tasks)
        if len(plan) > 1 and not self._cluster:
            # several queues (an event's subscribers): one MULTI/EXEC, all or none. Every
            # call runs the same script, so a flushed script cache fails all of them (then
            # load it and send the transaction again) or none.
            for again in (True, False):
                pipe = self._get().pipeline(transaction=True)
                for queue, idx in plan:
                    keys = keys_of(queue)
                    args = enqueue_args([tasks[i] for i in idx])
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                replies = pipe.execute(raise_on_error=False)
                if not (again and isinstance(replies[0], NoScriptError)):
                    break
                self._get().script_load(script.source)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        else:
            replies = [
                self.eval(script, keys_of(q), enqueue_args([tasks[i] for i in idx]))
                for q, idx in plan
            ]
        for (_, idx), reply in zip(plan, replies, strict=True):
            for i, ok in zip(idx, reply, strict=True):
                out[i] = bool(ok)
        return out

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns = []
        self._client = None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            conns, self._conns = self._conns, []
        self._local = threading.local()
        for c in conns:
            c.disconnect()
        if client is not None:
            client.close()
