"""Cross-process wake-up for the SQLite broker: a directory of unix datagram sockets.

Every broker that waits binds one socket in ``<db>.wake/``; a broker that made work
claimable sends a 1-byte datagram to every socket there. Datagrams carry no data and may
be lost or merged (a full receive buffer already holds a ring), which is fine: a ring only
means "look again". A socket whose owner died refuses datagrams (ECONNREFUSED) and is
unlinked by the first ringer to notice.

Unix socket paths are limited to 107 bytes; when ``<db>.wake/<16 hex>.s`` would be longer,
every process uses ``<tempdir>/offload-wake-<hash of the db's real path>/`` instead (the
same rule everywhere, so they meet).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["Doorbell", "wake_dir"]

_MAX_PATH = 107  # sun_path is 108 bytes including the terminating NUL
_SOCK_NAME_LEN = len("0123456789abcdef.s")
# A directory's mtime has coarse (jiffy) resolution, so a listing taken while the directory
# changed recently is not trusted for longer than this.
_SETTLE_NS = 100_000_000

_HAS_UNIX = hasattr(socket, "AF_UNIX")


def wake_dir(db_path: str) -> str:
    """The doorbell directory for the database at ``db_path`` (an absolute path)."""
    preferred = db_path + ".wake"
    if len(os.fsencode(preferred)) + 1 + _SOCK_NAME_LEN <= _MAX_PATH:
        return preferred
    # only long paths get here: hashlib and tempfile are imported for them alone
    import hashlib
    import tempfile

    digest = hashlib.sha256(os.fsencode(os.path.realpath(db_path))).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"offload-wake-{digest}")


class Doorbell:
    """One broker's doorbell: rings others from any thread, listens on one event loop."""

    def __init__(self, db_path: str) -> None:
        self.dir = wake_dir(db_path)
        self.path: str | None = None  # our own socket, once listening
        self._recv: socket.socket | None = None
        self._send: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listing: list[str] = []
        self._mtime_ns = -1
        self._lock = threading.Lock()
        self.broken = not _HAS_UNIX  # True: cannot listen; waiters fall back to a slow poll

    # ---- ringing (any thread) -------------------------------------------------------------

    def ring(self) -> None:
        """Send a datagram to every listening socket but our own. Never raises."""
        try:
            st = os.stat(self.dir)
        except OSError:
            return  # nobody ever listened
        now_ns = time.time_ns()
        with self._lock:
            if st.st_mtime_ns != self._mtime_ns:
                self._relist(st.st_mtime_ns, now_ns)
            listing, sender = self._listing, self._sender()
        if sender is None:
            return
        for path in listing:
            if path == self.path:
                continue
            try:
                sender.sendto(b"\x01", path)
            except BlockingIOError:
                pass  # its buffer is full: it has been rung already
            except ConnectionRefusedError:
                # nobody reads it: its process died without cleaning up
                with contextlib.suppress(OSError):
                    os.unlink(path)
                self._mtime_ns = -1
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTSOCK, errno.ECONNREFUSED):
                    self._mtime_ns = -1
                # anything else (EPERM on a foreign socket...) is not ours to fix

    def _relist(self, mtime_ns: int, now_ns: int) -> None:
        try:
            names = os.listdir(self.dir)
        except OSError:
            names = []
        self._listing = [os.path.join(self.dir, n) for n in names if n.endswith(".s")]
        # a directory changed within its timestamp resolution may change again unseen
        self._mtime_ns = mtime_ns if now_ns - mtime_ns > _SETTLE_NS else -1

    def _sender(self) -> socket.socket | None:
        if self._send is None and _HAS_UNIX:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.setblocking(False)
                self._send = s
            except OSError:
                return None
        return self._send

    # ---- listening (one event loop) -------------------------------------------------------

    def listen(self, loop: asyncio.AbstractEventLoop, on_ring: Callable[[], None]) -> bool:
        """Bind our socket (once) and watch it on ``loop``; False when that is impossible."""
        if self.broken:
            return False
        if self._loop is loop:
            return True
        try:
            if self._recv is None:
                os.makedirs(self.dir, exist_ok=True)
                path = os.path.join(self.dir, os.urandom(8).hex() + ".s")
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    s.setblocking(False)
                    s.bind(path)
                except OSError:
                    s.close()
                    raise
                self._recv, self.path = s, path
            self._unwatch()
            recv = self._recv

            def readable() -> None:
                try:
                    while True:
                        recv.recv(64)
                except OSError:
                    pass
                on_ring()

            loop.add_reader(recv.fileno(), readable)
            self._loop = loop
            return True
        except OSError:
            self.broken = True
            self.close()
            return False

    def _unwatch(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._recv is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                loop.remove_reader(self._recv.fileno())

    def close(self) -> None:
        """Stop listening and remove our socket file."""
        self._unwatch()
        recv, path = self._recv, self.path
        self._recv = self.path = None
        if recv is not None:
            recv.close()
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if self._send is not None:
            self._send.close()
            self._send = None

    def forget(self) -> None:
        """After fork: drop the parent's sockets without unlinking the parent's file."""
        for s in (self._recv, self._send):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._recv = self._send = self._loop = self.path = None
        self._lock = threading.Lock()
        self._mtime_ns = -1
