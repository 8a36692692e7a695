"""The process executor's child: a fresh interpreter (started with ``exec``, never a
``fork()`` of the threaded worker) that imports the app's task modules once and then runs
one task at a time for its parent, over a socket of its own.

Each request names the task function by module and qualified name, and carries the task's
stored payload unchanged: the child decodes and converts the arguments itself, exactly as
a thread would. Each reply says how the run ended (a value or an exception described as
data: offload never pickles), the CPU time the child spent, and the run's peak resident
memory above what the child held before it: the kernel's high-water mark (``VmHWM``) is
reset before each task by writing 5 to ``/proc/self/clear_refs``, so the peak is this
task's alone.

Frames are a 4-byte big-endian length and a msgpack array. Stdout and stderr are the
worker's own, so what a task prints or logs shows up where the worker's does.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from typing import Any

import msgspec

__all__ = ["main", "read_frame", "write_frame"]

_HEAD = struct.Struct(">I")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
MAX_FRAME = 256 * 1024 * 1024  # a frame larger than this is a protocol error, not a task


def write_frame(sock: socket.socket, obj: Any) -> None:
    data = _enc.encode(obj)
    sock.sendall(_HEAD.pack(len(data)) + data)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> Any:
    (n,) = _HEAD.unpack(_read_exactly(sock, 4))
    if n > MAX_FRAME:
        raise EOFError
    return _dec.decode(_read_exactly(sock, n))


# -- memory ------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_of(pid: int | str = "self") -> int:
    """Resident bytes of a process (0 when it is gone or /proc is not there)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _Meter:
    """The child's peak resident memory per task: the kernel's high-water mark (VmHWM),
    reset before each task (writing 5 to clear_refs), read after it. Both files stay
    open and are re-read with pread: a task pays two system calls, not six."""

    def __init__(self) -> None:
        try:
            self.clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            self.status = os.open("/proc/self/status", os.O_RDONLY)
        except OSError:
            self.clear = self.status = -1
        self.base = self.read()[1] if self.status >= 0 else 0

    def reset(self) -> bool:
        if self.clear < 0:
            return False
        try:
            os.write(self.clear, b"5")
            return True
        except OSError:
            self.clear = -1
            return False

    def read(self) -> tuple[int, int]:
        """(VmHWM, VmRSS) in bytes."""
        data = os.pread(self.status, 8192, 0)
        return _field(data, b"VmHWM:"), _field(data, b"VmRSS:")

    def peak(self) -> int:
        """This task's peak above what the child held before it (-1: not measured), and
        what it holds now becomes the next task's base."""
        try:
            hwm, rss = self.read()
        except OSError:
            return -1
        peak, self.base = max(0, hwm - self.base), rss
        return peak


def _field(data: bytes, name: bytes) -> int:
    i = data.find(name)
    if i < 0:
        return 0
    return int(data[i + len(name) : data.index(b"kB", i)]) * 1024


# -- running -----------------------------------------------------------------------------


class _Child:
    def __init__(self) -> None:
        self.functions: dict[tuple[str, str], Any] = {}
        self.meter = _Meter()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

    def function(self, module: str, qualname: str) -> Any:
        key = (module, qualname)
        tf = self.functions.get(key)
        if tf is None:
            obj: Any = importlib.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            from ..task import TaskFunction

            if not isinstance(obj, TaskFunction):
                raise LookupError(f"{module}.{qualname} is not a task function in the child")
            tf = self.functions[key] = obj
        return tf

    def run(self, request: list[Any]) -> list[Any]:
        module, qualname, task_id, queue, name, attempt, payload, want = request
        from .. import calls as _calls
        from ..core import envelope as _env
        from ..errors import BadArguments
        from ..task import TaskInfo, _current

        c0 = time.process_time()
        measured = self.meter.reset()
        token = None
        try:
            tf = self.function(module, qualname)
            env = _env.decode(payload)
            args, kwargs = tf.convert_args(env.args, env.kwargs)
            info = TaskInfo(task_id, tf.name, queue, name, attempt, env.headers, None)
            deadline = env.headers.get(_env.DEADLINE)
            if deadline is not None:
                try:
                    info._deadline = float(deadline)
                except ValueError:
                    pass
            token = _current.set(info)
            try:
                value = tf.fn(*args, **kwargs)
            except TypeError as exc:
                if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                    raise BadArguments(f"{tf.name}{tf.signature}: {exc}") from None
                raise
            if inspect.isawaitable(value):
                value = self.loop.run_until_complete(_awaited(value))
            out = _calls.encode_outcome(value, tf.name) if want else None
            reply: list[Any] = ["ok", out]
        except BaseException as exc:  # the parent judges it; the child lives on
            reply = ["err", *_describe(exc)]
        finally:
            if token is not None:
                _current.reset(token)
        cpu = time.process_time() - c0
        return [*reply, cpu, self.meter.peak() if measured else -1]


def _describe(exc: BaseException) -> list[Any]:
    """(kind, type, message, traceback, retry_after) of how a handler ended."""
    from ..core.verdict import TRACEBACK_LIMIT, describe, safe_text
    from ..errors import BadArguments, Fail, Retry

    kind = "exc"
    after = None
    if isinstance(exc, BadArguments):
        kind = "bad"
    elif isinstance(exc, Fail):
        kind = "fail"
    elif isinstance(exc, Retry):
        kind, after = "retry", exc.after
    text = describe(exc)
    name = type(exc).__qualname__
    message = text[len(name) + 2 :] if text.startswith(name + ": ") else ""
    try:
        tb = traceback.format_exc()
    except Exception:
        tb = "<the traceback could not be formatted>"
    # made safe here: the frame must encode whatever the exception held
    return [kind, safe_text(name, 200), safe_text(message), safe_text(tb, TRACEBACK_LIMIT), after]


async def _awaited(value: Any) -> Any:
    return await value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fd = int(argv[0])
    # Ctrl-C reaches the whole process group: the parent decides what happens to tasks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path = os.environ.pop("OFFLOAD_CHILD_PATH", None)
    if path:
        sys.path[:] = json.loads(path)
    sock = socket.socket(fileno=fd)
    child = _Child()
    failed: list[str] = []
    for module in argv[1:]:  # preload: the first task does not pay for the imports
        try:
            importlib.import_module(module)
        except BaseException as exc:
            failed.append(f"{module}: {exc!r}")
    write_frame(sock, ["ready", os.getpid(), failed])
    while True:
        try:
            request = read_frame(sock)
        except (EOFError, OSError):
            return 0  # the parent is gone or closed the socket: nothing left to do
        try:
            # in a context of its own: a context variable one task sets is not the next's
            reply = contextvars.copy_context().run(child.run, request)
            write_frame(sock, reply)
        except (BrokenPipeError, ConnectionError):
            return 0
        except Exception as exc:  # a reply that would not encode: say so, and go on
            from ..core.verdict import safe_text

            why = safe_text(f"the child could not send back how the task ended: {exc!r}")
            write_frame(sock, ["err", "exc", "ProcessDied", why, "", None, 0.0, -1])


if __name__ == "__main__":
    sys.exit(main())
