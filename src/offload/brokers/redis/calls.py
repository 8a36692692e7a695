"""How the Redis broker talks to the server: its connections, and every script call.

Every state change is one Lua script, run by SHA (``EVALSHA``) and loaded again on
``NOSCRIPT`` (a restarted server, ``SCRIPT FLUSH``). Errors become offload's here
(:mod:`.faults`), so the broker's methods deal only in arguments and replies. Writes are
never retried blindly (a repeated claim would hide tasks until their lease ends); reads
that are safe to repeat go through :meth:`ScriptCalls._read`, which retries an outage
three times with backoff.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as _aredis
from redis.asyncio.retry import Retry as _AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from ...errors import BrokerError, BrokerUnavailable, OffloadError
from .direct import DirectCalls
from .faults import Faults, databases
from .scripts import CommandPacker, QueueKeys, Script, _bulk, scripts
from .url import RedisURL
from .wait import SOCKET_TIMEOUT, probe

__all__ = ["ScriptCalls"]

# tries of a script that meets NOSCRIPT, each after loading them all again: a flush may land
# between the load and the retry (a test flushes from its handlers while acks go out)
NOSCRIPT_TRIES = 3


def _packed(s: Script, keys: tuple[str, ...], args: Sequence[Any]) -> bytes:
    """``EVALSHA`` in the wire protocol, packed whole (for keys used once)."""
    parts = ["EVALSHA", s.sha, str(len(keys)), *keys, *args]
    return b"*%d\r\n%s" % (len(parts), b"".join(map(_bulk, parts)))


class ScriptCalls:
    """The async client, a connection of its own for one-at-a-time script calls, and the
    script calls themselves, for :class:`~.broker.RedisBroker`."""

    def __init__(self, url: str, parsed: RedisURL) -> None:
        self.url = url
        self._url = parsed
        self.prefix = parsed.prefix
        self._cluster = parsed.cluster
        self._where = parsed.where
        self._faults = Faults(url, parsed.where)
        self._scripts = scripts()
        self._keys: dict[str, QueueKeys] = {}
        self._r: Any = None
        self._packer = CommandPacker()
        self._fast: Any = None
        self._fast_lock = asyncio.Lock()
        self._read_retry = _AsyncRetry(
            ExponentialBackoff(cap=0.25, base=0.01), 3, supported_errors=(BrokerUnavailable,)
        )
        self._direct: DirectCalls | None = None
        self._direct_lock = threading.Lock()

    def _client_kwargs(self) -> dict[str, Any]:
        return {"socket_connect_timeout": 5.0, "socket_timeout": SOCKET_TIMEOUT}

    async def _connect(self) -> None:
        """Build the client (no I/O) and load the scripts: the first round trip, so a URL
        only the server can judge (a database it lacks, a wrong password) fails here."""
        if self._r is None:
            if self._cluster:
                self._r = _aredis.RedisCluster.from_url(
                    self._url.redis_url, **self._client_kwargs()
                )
            else:
                # No blind retries: a claim repeated after a lost reply would lease tasks
                # nobody runs until the lease ends. Reads retry explicitly (_read).
                self._r = _aredis.Redis.from_url(
                    self._url.redis_url, retry=_AsyncRetry(NoBackoff(), 0), **self._client_kwargs()
                )
        try:
            await self._load_scripts()
        except Exception as exc:
            err = self._faults.error("opening the broker", exc)
            if "no such database" in str(err):
                err = await self._no_such_database(err)
            raise err from exc

    async def _no_such_database(self, err: OffloadError) -> OffloadError:
        parts = urlsplit(self._url.redis_url)  # database 0, which every server has
        url0 = urlunsplit((parts.scheme, parts.netloc, "/0", parts.query, ""))
        n = await databases(
            lambda: _aredis.Redis.from_url(
                url0, retry=_AsyncRetry(NoBackoff(), 0), **self._client_kwargs()
            )
        )
        if n is None:
            return err
        return type(err)(
            f"broker URL {self.url!r}: database {self._url.db} does not exist: Redis at "
            f"{self._where} has {n} databases (0 to {n - 1}); use one of those in the URL, "
            "or raise 'databases' in redis.conf"
        )

    async def _load_scripts(self) -> None:
        for s in self._scripts.values():
            await self._r.script_load(s.source)

    def _direct_calls(self) -> DirectCalls:
        """The blocking calls' connections, one per calling thread (made on first use)."""
        direct = self._direct
        if direct is None:
            with self._direct_lock:
                direct = self._direct
                if direct is None:
                    kwargs = self._client_kwargs()
                    connect = kwargs.pop("socket_connect_timeout")
                    direct = self._direct = DirectCalls(self._url.redis_url, kwargs, connect)
        return direct

    def _client(self) -> Any:
        if self._r is None:
            raise BrokerError(f"Redis broker {self.url!r} is not open: call open() first")
        return self._r

    def _qkeys(self, queue: str) -> QueueKeys:
        k = self._keys.get(queue)
        if k is None:
            k = self._keys[queue] = QueueKeys.of(self.prefix, queue)
        return k

    async def _close_calls(self) -> None:
        with self._direct_lock:
            direct, self._direct = self._direct, None
        if direct is not None:
            direct.close()
        r, self._r = self._r, None
        fast, self._fast = self._fast, None
        if fast is not None:
            await fast.disconnect()
        if r is not None:
            await r.aclose()

    async def _eval(self, name: str, queue: str, args: Sequence[Any] = ()) -> Any:
        """Run one per-queue script; raise offload's error when it fails (see faults)."""
        r = self._client()
        s = self._scripts[name]
        keys = self._qkeys(queue).keys
        try:
            for _ in range(NOSCRIPT_TRIES - 1):
                try:
                    return await self._evalsha(r, s, keys, args)
                except NoScriptError:
                    # SCRIPT FLUSH or a restarted server: load everything again and retry;
                    # a few times, since another flush may land while loading
                    await self._load_scripts()
            return await self._evalsha(r, s, keys, args)
        except Exception as exc:
            raise self._faults.error(name.replace("_", " "), exc) from exc

    async def _eval_once(
        self, op: str, s: Script, keys: tuple[str, ...], args: Sequence[Any]
    ) -> Any:
        """Run a script that is not one of the per-queue ones, on keys of this call's own
        (a result's): its command is packed afresh, not remembered per keys, and it is
        loaded on ``NOSCRIPT``."""
        r = self._client()
        try:
            try:
                return await self._evalsha(r, s, keys, args, remember=False)
            except NoScriptError:
                await r.script_load(s.source)
                return await self._evalsha(r, s, keys, args, remember=False)
        except Exception as exc:
            raise self._faults.error(op, exc) from exc

    async def _evalsha(
        self, r: Any, s: Script, keys: tuple[str, ...], args: Sequence[Any], remember: bool = True
    ) -> Any:
        if self._cluster or self._fast_lock.locked():
            return await r.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)
        # Calls one at a time (the common case) share one connection outside the pool,
        # packed by hand: redis-py's pool checkout costs more than the script runs.
        # Concurrent calls go through the pool above, in parallel.
        async with self._fast_lock:
            # before any I/O: may refuse a text; ``remember``: the head kept per keys
            packed = self._packer.evalsha(s, keys, args) if remember else _packed(s, keys, args)
            conn = self._fast
            if conn is None:
                pool = r.connection_pool
                conn = self._fast = pool.connection_class(**pool.connection_kwargs)
            elif conn.is_connected and await probe(conn):
                await conn.disconnect()  # closed by the server: reconnect
            try:
                await conn.send_packed_command([packed])
                return await conn.read_response()
            except ResponseError:
                raise  # the reply was read whole: the connection is fine
            except BaseException:
                await conn.disconnect()  # a reply may be pending: never reuse as is
                raise

    async def _eval_many(
        self, name: str, calls: Sequence[tuple[str, Sequence[Any]]], *, atomic: bool = False
    ) -> list:
        """One script on several queues, pipelined (one round trip on a single server).
        ``atomic`` (a single server only): all in one MULTI/EXEC, so an outage before
        EXEC applies none of them. Every call runs the same script, so a flushed script
        cache fails all of them or none: then the script is loaded and the whole
        transaction sent again."""
        if len(calls) == 1:
            return [await self._eval(name, *calls[0])]
        r = self._client()
        s = self._scripts[name]
        op = name.replace("_", " ")
        atomic = atomic and not self._cluster
        try:
            for again in (atomic, False):
                pipe = r.pipeline(transaction=atomic)
                for queue, args in calls:
                    keys = self._qkeys(queue).keys
                    pipe.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
                if not (again and isinstance(results[0], NoScriptError)):
                    break
                await self._load_scripts()  # all failed alike: nothing was applied
        except Exception as exc:
            raise self._faults.error(op, exc) from exc
        out = []
        for (queue, args), res in zip(calls, results, strict=True):
            if isinstance(res, NoScriptError):
                res = await self._eval(name, queue, args)
            elif isinstance(res, Exception):
                raise self._faults.error(op, res) from res
            out.append(res)
        return out

    async def _read(self, fn: Callable[[], Any]) -> Any:
        """Run an idempotent read, retrying a dropped connection with backoff."""
        return await self._read_retry.call_with_retry(fn, lambda _e: asyncio.sleep(0))

    async def _command(self, op: str, *args: Any) -> Any:
        """One plain command on the pool, its errors offload's."""
        try:
            return await self._client().execute_command(*args)
        except Exception as exc:
            raise self._faults.error(op, exc) from exc
