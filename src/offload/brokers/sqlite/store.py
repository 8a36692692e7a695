"""The SQLite broker's file: URL options, one connection per thread, transactions, errors.

Every write runs in one ``BEGIN IMMEDIATE`` transaction (the write lock is taken before
anything is read) with the host clock read after the lock was granted; every read runs in
one read transaction (one snapshot).

Waiting for the lock. SQLite's own busy handler sleeps 1, 2, 5, 10 ... 100 ms between
tries, so a process that writes back to back (a busy worker's claim/ack loop) can keep an
enqueuing web request waiting for over a second. The connections therefore run with no
busy handler, and a transaction that meets a lock is rolled back and tried again after a
short randomised sleep (50 us doubling up to 1 ms) until ``busy_timeout`` has passed.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from ...errors import (
    BrokerError,
    BrokerFull,
    BrokerRefused,
    BrokerUnavailable,
    BrokerURLError,
)
from .queries import migrate

__all__ = ["Store", "parse_url"]

T = TypeVar("T")

_FIRST_NAP, _MAX_NAP = 0.00005, 0.001

# What the driver raises for a request (sqlite3.Error), and for a value it cannot bind: a
# str with a lone surrogate (UnicodeEncodeError), an int over 64 bits (OverflowError).
_DRIVER_ERRORS = (sqlite3.Error, UnicodeEncodeError, OverflowError)

_EXAMPLE = "sqlite:///relative.db or sqlite:////absolute/path.db"


#: the query parameters a sqlite:// URL takes
PARAMETERS = ("synchronous", "busy_timeout")


def parse_url(url: str) -> tuple[str, str, int]:
    """``(absolute path, synchronous, busy_timeout_ms)``. Every fault that can be seen
    without touching the disk raises BrokerURLError here, in one line naming the fault."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise BrokerURLError(f"broker URL {url!r}: not a sqlite:// URL; use {_EXAMPLE}")
    if parts.netloc:
        raise BrokerURLError(
            f"broker URL {url!r}: SQLite takes no host ({parts.netloc!r}); use {_EXAMPLE}"
        )
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not path.strip():
        raise BrokerURLError(f"broker URL {url!r}: no database file; use {_EXAMPLE}")
    if path == ":memory:" or path.startswith("file:") or "mode=memory" in parts.query:
        raise BrokerURLError(
            f"broker URL {url!r}: an in-memory database cannot be shared with worker "
            "processes; give a file, e.g. sqlite:///offload.db"
        )
    if path.endswith("/"):
        raise BrokerURLError(
            f"broker URL {url!r}: {path!r} names a directory; give the database file in "
            f"it, e.g. {path}offload.db"
        )
    synchronous, busy_ms = "normal", 5000
    seen: set[str] = set()
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in seen:
            raise BrokerURLError(f"broker URL {url!r}: {key}= is given twice; keep one")
        seen.add(key)
        if key == "synchronous":
            synchronous = value.lower()
            if synchronous not in ("normal", "full"):
                raise BrokerURLError(
                    f"broker URL {url!r}: synchronous={value!r} must be 'normal' (survives "
                    "process crashes) or 'full' (also survives power loss)"
                )
        elif key == "busy_timeout":
            try:
                busy_ms = int(value)
                if busy_ms < 0:
                    raise ValueError
            except ValueError:
                raise BrokerURLError(
                    f"broker URL {url!r}: busy_timeout={value!r} must be a whole number of "
                    "milliseconds, 0 or more (default 5000)"
                ) from None
        else:
            import difflib  # only for a URL that is wrong anyway

            close = difflib.get_close_matches(key, PARAMETERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BrokerURLError(
                f"broker URL {url!r}: unknown parameter {key!r}{hint}; SQLite takes "
                + " and ".join(f"{p}=" for p in PARAMETERS)
            )
    return os.path.abspath(path), synchronous, busy_ms


_live: weakref.WeakSet[Store] = weakref.WeakSet()
# Connections inherited over fork(), kept referenced so the child never closes (and so
# never checkpoints or unlocks) what belongs to its parent.
_orphans: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for store in list(_live):
        store.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Store:
    """Connections to one database file: one per thread, opened on the thread's first
    call between :meth:`open` and :meth:`close`, all closed by :meth:`close`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, self.synchronous, self.busy_timeout_ms = parse_url(url)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._gen = 0  # bumped by close(): connections of an older generation are stale
        self._conns: list[sqlite3.Connection] = []
        self._migrated = False
        self.opened = False
        _live.add(self)

    def open(self) -> None:
        """Mark open and connect this thread (creating or migrating the schema)."""
        self.opened = True
        try:
            self.conn()
        except BaseException:
            self.opened = False
            raise

    def close(self) -> None:
        """Close every thread's connection; open() makes the store usable again."""
        self.opened = False
        with self._lock:
            self._gen += 1
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def forget(self) -> None:
        """After fork(): a connection must not cross it; the child connects anew."""
        _orphans.extend(self._conns)
        self._local = threading.local()
        self._conns = []
        self._lock = threading.Lock()
        self._gen += 1

    def require_open(self) -> None:
        if not self.opened:
            raise BrokerError(f"SQLite broker {self.url!r} is not open: call open() first")

    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.gen == self._gen:
            return conn
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        self.require_open()
        local = self._local
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise BrokerURLError(
                f"SQLite database {self.path}: directory {parent} does not exist; create it "
                "or point the URL elsewhere"
            )
        if os.path.isdir(self.path):
            raise BrokerURLError(
                f"SQLite database {self.path} is a directory; give a file in it, e.g. "
                f"sqlite:///{os.path.join(self.path, 'offload.db')}"
            )
        try:
            # check_same_thread=False only so that close() can close every thread's
            # connection; each connection is still used by the one thread that opened it.
            conn = sqlite3.connect(
                self.path,
                timeout=0.0,  # no busy handler: see the module docstring
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise self.error(exc, "open") from exc
        try:
            self._set_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA cache_size = -16000")
            if not self._migrated:
                with self._lock:
                    if not self._migrated:
                        self._retrying(migrate, conn)
                        self._migrated = True
        except RuntimeError as exc:  # a schema from a newer offload
            conn.close()
            raise BrokerError(f"SQLite database {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            conn.close()
            if "not a database" in str(exc) or "encrypted" in str(exc):
                # the URL names some other file: waiting will not make it a database
                raise BrokerURLError(
                    f"SQLite database {self.path} is not an SQLite database ({exc}); point "
                    "the URL at a new file, or restore this one from a backup"
                ) from None
            raise self.error(exc, "open") from exc
        with self._lock:
            self._conns.append(conn)
            gen = self._gen
        local.conn, local.gen = conn, gen
        return conn

    def _retrying(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, tried again while it fails on a lock, until busy_timeout."""
        deadline = 0.0
        nap = _FIRST_NAP
        while True:
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if not deadline:
                    deadline = now + self.busy_timeout_ms / 1000.0
                if now >= deadline:
                    raise
            import random  # only under contention: a worker never locked out never needs it

            time.sleep(nap * (0.5 + random.random()))
            nap = min(nap * 2, _MAX_NAP)

    def _set_wal(self, conn: sqlite3.Connection) -> None:
        (mode,) = self._retrying(lambda c: c.execute("PRAGMA journal_mode = WAL").fetchone(), conn)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch the journal to WAL (got {mode!r})")

    def error(self, exc: Exception, what: str) -> BrokerError:
        """The offload error for a driver error, saying what to do: BrokerRefused when this
        request itself was refused (retrying it fails the same way), BrokerFull when the
        disk is full, BrokerUnavailable otherwise. The transaction was rolled back first,
        so nothing was half done."""
        msg = str(exc)
        if isinstance(exc, UnicodeEncodeError):
            bad = exc.object[exc.start : exc.end] if isinstance(exc.object, str) else ""
            return BrokerRefused(
                f"SQLite database {self.path}: {what} refused: a text value holds {bad!r} "
                f"at position {exc.start}, which cannot be stored as UTF-8 ({exc.reason}); "
                "clean the text first, e.g. text.encode('utf-8', 'backslashreplace').decode()"
            )
        if isinstance(exc, OverflowError):
            return BrokerRefused(
                f"SQLite database {self.path}: {what} refused: {msg}; SQLite stores integers "
                "of 64 bits at most"
            )
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
        if code == sqlite3.SQLITE_TOOBIG or isinstance(exc, sqlite3.DataError):
            return BrokerRefused(
                f"SQLite database {self.path}: {what} refused: {msg} (a payload or text over "
                "SQLite's length limit); keep big data elsewhere and send a reference to it"
            )
        if isinstance(exc, sqlite3.IntegrityError) or (
            isinstance(exc, sqlite3.ProgrammingError) and "binding parameter" in msg
        ):
            return BrokerRefused(f"SQLite database {self.path}: {what} refused: {msg}")
        if code == sqlite3.SQLITE_FULL or "disk is full" in msg:
            return BrokerFull(
                f"SQLite database {self.path} is full ({msg}) during {what}; nothing was "
                "written. Free space on its disk, then try again (workers wait and retry)"
            )
        if "locked" in msg or "busy" in msg:
            return BrokerUnavailable(
                f"SQLite database {self.path} stayed locked for more than busy_timeout="
                f"{self.busy_timeout_ms} ms during {what}: another process holds a long write "
                "transaction. Look for a stuck process, or raise ?busy_timeout= in the URL"
            )
        if "not a database" in msg or "malformed" in msg or "encrypted" in msg:
            return BrokerUnavailable(
                f"SQLite database {self.path} is not an SQLite database or is corrupt ({msg}); "
                "point the URL at a new file, or restore this one from a backup"
            )
        return BrokerUnavailable(
            f"SQLite database {self.path}: {what} failed: {msg}. Check that the file and its "
            "directory exist, are writable, and are on a local disk"
        )

    def write(self, what: str, op: Callable[..., T], *args: Any) -> T:
        """Run ``op(conn, now, *args)`` in one BEGIN IMMEDIATE transaction; ``now`` is read
        once the write lock is held. Rolled back entirely when anything fails."""
        conn = self.conn()
        try:
            return self._retrying(_transaction, conn, "BEGIN IMMEDIATE", op, args)
        except _DRIVER_ERRORS as exc:
            raise self.error(exc, what) from exc

    def read(self, what: str, op: Callable[..., T], *args: Any) -> T:
        """Run ``op(conn, now, *args)`` in one read transaction (one snapshot)."""
        conn = self.conn()
        try:
            return self._retrying(_transaction, conn, "BEGIN", op, args)
        except _DRIVER_ERRORS as exc:
            raise self.error(exc, what) from exc


def _transaction(conn: sqlite3.Connection, begin: str, op: Callable[..., T], args: Any) -> T:
    conn.execute(begin)
    try:
        result = op(conn, time.time(), *args)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)
