"""What went wrong, in offload's words: the Redis broker's errors, by who is at fault.

============================================  ==========================================
redis-py / Redis says                         offload raises
============================================  ==========================================
cannot connect, connection dropped, timeout,  :class:`~offload.errors.BrokerUnavailable`
``LOADING``, ``BUSY``, ``MASTERDOWN``,        (an outage: nothing happened; try again)
``READONLY``, ``TRYAGAIN``, ``CLUSTERDOWN``
``OOM command not allowed`` (``maxmemory``    :class:`~offload.errors.BrokerFull`
with ``noeviction``), ``MISCONF`` (cannot     (an outage that needs someone to free
persist)                                      memory or disk)
wrong password, no such user, ``NOPERM``,     :class:`~offload.errors.BrokerURLError`
``DB index is out of range``                  (the URL is wrong: a worker must not wait)
any other error reply; a text the wire        :class:`~offload.errors.BrokerRefused`
cannot carry (a lone surrogate)               (this request is refused; it always will be)
============================================  ==========================================

Scripts are atomic, and those that may grow memory are flagged so that Redis refuses them
whole, before their first write, under ``maxmemory`` (``#!lua`` without ``allow-oom``), so
none of these errors leaves anything half done.
"""

from __future__ import annotations

from redis.exceptions import (
    AuthenticationError,
    DataError,
    NoPermissionError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as _ConnError
from redis.exceptions import TimeoutError as _Timeout

from ...errors import (
    BrokerError,
    BrokerFull,
    BrokerRefused,
    BrokerUnavailable,
    BrokerURLError,
    OffloadError,
)

__all__ = ["UNAVAILABLE", "Faults"]

#: errors that mean the server could not be reached (redis-py's and the OS's)
UNAVAILABLE = (_ConnError, _Timeout, OSError)

# Error replies that say "not now" (a restart, a long script, a failover): an outage.
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN",
              "NOREPLICAS", "UNBLOCKED")  # fmt: skip


class Faults:
    """Maps an error met during ``op`` (e.g. "enqueue") on the server ``where`` of ``url``
    to the offload error that says what to do."""

    def __init__(self, url: str, where: str) -> None:
        self.url, self.where = url, where

    def unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"cannot reach Redis at {self.where} ({type(exc).__name__}: {exc}); check that "
            "the server is running and that the broker URL is right; the call did not "
            "complete, so retry it once Redis is back (enqueue is idempotent by task id)"
        )

    def error(self, op: str, exc: BaseException) -> OffloadError:
        """The offload error to raise for ``exc``, raised by the driver during ``op``."""
        if isinstance(exc, OffloadError):
            return exc
        msg = str(exc)
        # redis-py takes the code off the replies it knows (OOM, NOPERM, ...) and keeps it
        # in status_code; other replies still start with it.
        code = getattr(exc, "status_code", None) or (
            msg.split(" ", 1)[0] if isinstance(exc, ResponseError) else ""
        )
        if isinstance(exc, OutOfMemoryError):
            code = "OOM"
        elif isinstance(exc, NoPermissionError):
            code = "NOPERM"
        if isinstance(exc, AuthenticationError) or code in ("WRONGPASS", "NOAUTH"):
            return BrokerURLError(
                f"Redis at {self.where} refused the credentials of broker URL {self.url!r} "
                f"({msg}); put the right user and password in the URL "
                "(redis://USER:PASSWORD@host:6379/0)"
            )
        if code == "NOPERM":
            return BrokerURLError(
                f"Redis at {self.where} does not let the user of broker URL {self.url!r} "
                f"{op} ({msg}); the broker needs EVALSHA, SCRIPT LOAD, BLPOP, LPUSH, TIME, "
                "HGETALL, CLIENT ID and CLIENT UNBLOCK on its keys: grant them in the ACL"
            )
        if "DB index is out of range" in msg or "invalid DB index" in msg:
            return BrokerURLError(
                f"broker URL {self.url!r}: Redis at {self.where} has no such database "
                f"({msg}); use a smaller number, or raise 'databases' in redis.conf"
            )
        if code == "OOM":
            return BrokerFull(
                f"Redis at {self.where} is out of memory (maxmemory reached, policy "
                f"noeviction): {op} refused, nothing was written. Free memory (drain or "
                "purge queues, delete dead letters) or raise maxmemory; workers wait and retry"
            )
        if code == "MISCONF":
            return BrokerFull(
                f"Redis at {self.where} cannot persist to disk and refuses writes ({msg}): "
                f"{op} refused, nothing was written. Free disk space on the server or fix "
                "its persistence settings; workers wait and retry"
            )
        if isinstance(exc, UNAVAILABLE) or code in _TRANSIENT:
            return self.unavailable(exc)
        if isinstance(exc, UnicodeEncodeError):
            bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
            return BrokerRefused(
                f"Redis at {self.where}: {op} refused: a text value holds {bad!r} at position "
                f"{exc.start}, which cannot be sent as UTF-8 ({exc.reason}); clean the text "
                "first, e.g. text.encode('utf-8', 'backslashreplace').decode()"
            )
        if isinstance(exc, (ResponseError, DataError)):
            return BrokerRefused(f"Redis at {self.where} refused {op}: {msg}")
        if isinstance(exc, RedisError):
            return self.unavailable(exc)
        return BrokerError(f"Redis at {self.where}: {op} failed: {type(exc).__name__}: {msg}")


async def databases(client_factory: object) -> int | None:
    """How many databases the server has (``CONFIG GET databases``), or None when it will
    not say (an ACL without CONFIG)."""
    try:
        r = client_factory()  # type: ignore[operator]
        try:
            reply = await r.config_get("databases")
        finally:
            await r.aclose()
        return int(reply["databases"])
    except (RedisError, OSError, KeyError, ValueError):
        return None
