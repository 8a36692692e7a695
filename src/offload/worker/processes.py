"""The process executor: tasks of ``executor="process"`` services run in reused child
processes, one task per child at a time, so a task's memory can be watched and capped and
a task that crashes its interpreter costs only its child.

While a child runs a task the worker reads its resident memory every
:data:`WATCH_EVERY` seconds; past the task's ``memory_limit`` the child is killed
(SIGKILL: a process over its budget must not get to allocate more while it cleans up)
and the task fails with :class:`~offload.errors.MemoryLimitExceeded`, naming the limit
and the peak seen, under its queue's retry policy, or is moved to its ``on_oom`` queue
with the attempt counted. A child that dies any other way (a segfault, ``os._exit``, a
kill from outside) fails its task with :class:`~offload.errors.ProcessDied` saying how;
one the kernel's OOM killer took is reported as ``MemoryLimitExceeded`` when the cgroup
says so. The worker itself never dies from a task: the child is replaced.

The same cancellation that stops an async handler stops a child: a timeout, a lost
lease, a deadline that passed, a drain whose grace ran out. Each kills the child.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .. import calls as _calls
from ..brokers.base import NewTask
from ..core import envelope as _env
from ..errors import BadArguments, Fail, MemoryLimitExceeded, ProcessDied, Retry
from ..outcomes import EncodedOutcome
from ..service import format_size
from .child import MAX_FRAME, rss_of

if TYPE_CHECKING:
    from ..task import TaskFunction
    from .runtime import Worker
    from .state import Running

__all__ = ["ChildPool", "ProcessRunner"]

log = logging.getLogger("offload.worker")

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()

WATCH_EVERY = 0.02  # seconds between looks at a busy child's memory (kill within 250 ms)
START_TIMEOUT = 60.0  # seconds a new child gets to import the app and say it is ready
#: a header on a task moved to its ``on_oom`` queue: the attempts it already had
PRIOR_ATTEMPTS = "offload-prior-attempts"
#: and the id of the task it copies: its result is stored under that id, for its caller
ORIGIN_ID = "offload-origin-id"


# ``-c`` rather than ``-m offload.worker.child``: the package imports that module itself,
# and running an imported module as __main__ would load it twice
_CHILD_MAIN = "import sys; from offload.worker.child import main; sys.exit(main())"


class _Gone(Exception):
    """The child closed its socket: it died (or was killed) before replying."""


class _Link(asyncio.Protocol):
    """The worker's end of a child's socket: length-prefixed frames, one request in flight
    (a plain Protocol: a task's round trip is a write and one future, not four awaits)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.frames: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            n = int.from_bytes(buf[:4], "big")
            if n > MAX_FRAME:
                self.transport.close()  # type: ignore[union-attr]
                return
            if len(buf) < 4 + n:
                return
            frame = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
            w = self.waiter
            if w is not None and not w.done():
                w.set_result(frame)
            else:
                self.frames.append(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(_Gone())

    async def next_frame(self) -> bytes:
        if self.frames:
            return self.frames.popleft()
        if self.lost:
            raise _Gone
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            return await self.waiter
        finally:
            self.waiter = None

    def send(self, data: bytes) -> None:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise _Gone
        self.transport.write(len(data).to_bytes(4, "big") + data)


class Child:
    """One child process and its socket; ``why`` says why the worker killed it."""

    __slots__ = ("base_oom", "link", "peak", "pid", "proc", "started", "why")

    def __init__(self, proc: subprocess.Popen, link: _Link) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.link = link
        self.why: str | None = None
        self.peak = 0
        self.started = time.monotonic()
        self.base_oom = _oom_kills()

    def kill(self, why: str) -> None:
        if self.why is None:
            self.why = why
        with contextlib.suppress(ProcessLookupError, OSError):
            self.proc.send_signal(signal.SIGKILL)

    async def send(self, request: list[Any]) -> list[Any]:
        self.link.send(_enc.encode(request))
        return _dec.decode(await self.link.next_frame())

    async def returncode(self) -> int | None:
        """The child's exit status once it is gone (waiting up to a second for it)."""
        for _ in range(200):
            rc = self.proc.poll()
            if rc is not None:
                return rc
            await asyncio.sleep(0.005)
        self.kill("did not exit after closing its socket")
        return await asyncio.get_running_loop().run_in_executor(None, self.proc.wait)

    def close(self) -> None:
        if self.link.transport is not None:
            self.link.transport.close()
        self.kill("worker stopping")
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)


class ChildPool:
    """Up to ``size`` reused children (a worker's concurrency: a slot never waits for
    one); started on first use, preloaded with the modules of the tasks they run."""

    def __init__(self, size: int, preload: list[str]) -> None:
        self.size = size
        self.preload = preload
        self.idle: list[Child] = []
        self.count = 0
        self.started = 0
        self.replaced = 0

    async def acquire(self) -> Child:
        while self.idle:
            child = self.idle.pop()
            if child.proc.poll() is None:
                return child
            self.discard(child)
        self.count += 1
        try:
            return await self._spawn()
        except BaseException:
            self.count -= 1
            raise

    def put(self, child: Child) -> None:
        child.why, child.peak = None, 0
        self.idle.append(child)

    def discard(self, child: Child) -> None:
        self.count -= 1
        self.replaced += 1
        with contextlib.suppress(Exception):
            if child.link.transport is not None:
                child.link.transport.close()
        with contextlib.suppress(Exception):
            child.proc.wait(timeout=0)  # reap it if it is gone

    async def _spawn(self) -> Child:
        mine, theirs = socket.socketpair()
        env = dict(os.environ)
        env["OFFLOAD_CHILD_PATH"] = json.dumps([p for p in sys.path if isinstance(p, str)])
        try:
            proc = subprocess.Popen(  # exec, never a fork() of this threaded process
                [sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno()), *self.preload],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=False,
            )
        finally:
            theirs.close()
        link = _Link()
        await asyncio.get_running_loop().create_unix_connection(lambda: link, sock=mine)
        child = Child(proc, link)
        try:
            hello = _dec.decode(await asyncio.wait_for(link.next_frame(), START_TIMEOUT))
        except BaseException:
            child.close()
            raise
        self.started += 1
        for failure in hello[2]:
            log.warning("process executor: the child could not preload %s", failure)
        return child

    def close(self) -> None:
        for child in self.idle:
            child.close()
        self.idle.clear()


class ProcessRunner:
    """The process-executor half of the worker (a mixin, like TaskRunner)."""

    def _watch_children(self: Worker) -> None:
        """Every WATCH_EVERY seconds while children run tasks: kill the ones over their
        memory limit, whose lease is lost or whose deadline passed."""
        self._child_watch = None
        busy = self._busy_children
        if not busy:
            return
        now = time.time()
        for child, (run, limit) in list(busy.items()):
            if child.why is not None:
                continue
            rss = rss_of(child.pid)
            if rss > child.peak:
                child.peak = rss
            if limit is not None and rss > limit:
                child.kill("memory")
            elif run.lost:
                child.kill("lease lost")
            elif run.info is not None and now > (run.info._deadline or now):
                child.kill("deadline")
        loop = self._loop
        assert loop is not None
        self._child_watch = loop.call_later(WATCH_EVERY, self._watch_children)

    async def _run_in_child(self: Worker, run: Running, tf: TaskFunction) -> None:
        c = run.claim
        info = run.info
        assert info is not None and self._loop is not None
        pool = self._children
        limit = self._limit_for(tf, c.queue)
        child = await pool.acquire()
        module, qualname = tf.fn.__module__, tf.fn.__qualname__
        want = _calls.RESULT_TTL in info.headers
        request = [module, qualname, c.id, c.queue, c.name, info.attempt, c.payload, want]
        self._busy_children[child] = (run, limit)
        if self._child_watch is None:
            self._child_watch = self._loop.call_later(WATCH_EVERY, self._watch_children)
        try:
            reply = await child.send(request)
        except asyncio.CancelledError:  # a timeout, or a drain out of grace: stop it
            self._busy_children.pop(child, None)
            child.kill("cancelled")
            pool.discard(child)
            raise
        except _Gone:
            self._busy_children.pop(child, None)
            pool.discard(child)
            rc = await child.returncode()
            exc = _death(tf, child, rc, limit)
            run.rss = child.peak or None
            if isinstance(exc, MemoryLimitExceeded) and tf.on_oom not in (None, c.queue):
                self._escalate(run, tf, exc)
            else:
                log.warning("task %s (%s): %s", c.id, tf.name, exc)
                self._done(run, exc, "", 0.0)
            return
        self._busy_children.pop(child, None)
        pool.put(child)
        status, *rest = reply
        cpu, peak = float(rest[-2]), int(rest[-1])
        run.rss = peak if peak >= 0 else None
        if status == "ok":
            if rest[0] is not None:
                info._result = EncodedOutcome(rest[0])
            self._done(run, None, "", cpu)
        else:
            kind, name, message, tb, after = rest[:5]
            self._done(run, _rebuild(kind, name, message, after), tb, cpu)

    def _limit_for(self: Worker, tf: TaskFunction, queue: str) -> int | None:
        """The memory limit of a run of ``tf`` claimed from ``queue``: the task's own (else
        its service's) on its own queue; on its ``on_oom`` queue, the bigger pool's: the
        largest limit of the services whose tasks that queue serves (None if one of them
        has none, or none is declared)."""
        if queue != tf.on_oom:
            return tf.memory_limit if tf.memory_limit is not None else tf.service.memory_limit  # type: ignore[union-attr]
        limits = {
            t.memory_limit if t.memory_limit is not None else t.service.memory_limit
            for t in self._core.tasks.values()
            if t.queue == queue and t.service is not None and t.service.executor == "process"
        }
        if not limits or None in limits:
            return None
        return max(x for x in limits if x is not None)

    def _escalate(self: Worker, run: Running, tf: TaskFunction, exc: MemoryLimitExceeded) -> None:
        """Move a task killed for memory to its ``on_oom`` queue (a bigger pool's), with
        the attempts it had: enqueued first, then acked, so a crash in between leaves
        both (the copy's id is derived, so a second try enqueues nothing new)."""
        c = run.claim
        broker = self._broker
        assert broker is not None and tf.on_oom is not None
        try:
            env = _env.decode(c.payload)
            prior = _prior_attempts(env.headers) + c.attempt
            origin = env.headers.get(ORIGIN_ID, c.id)
            env.headers = {**env.headers, PRIOR_ATTEMPTS: str(prior), ORIGIN_ID: origin}
            env.queue = tf.on_oom
            payload = _env.encode(env)
        except Exception as bug:  # judged as the plain failure instead
            log.exception("task %s: could not move it to %r: %s", c.id, tf.on_oom, bug)
            self._done(run, exc, "", 0.0)
            return
        if self._running.get(c.id) is not run:
            return
        wall = time.perf_counter() - run.started
        self._metrics.add(tf.name, wall, 0.0, failed=True)
        self._forget(run)
        self.stats.retried += 1
        copy = NewTask(f"{c.id[:24]}oom{c.attempt:05d}", tf.on_oom, payload, c.name)
        lease = c.lease

        async def move() -> None:
            await broker.enqueue([copy])
            await broker.ack([lease])

        log.warning("task %s (%s): %s; moved to queue %r", c.id, tf.name, exc, tf.on_oom)
        self._outbox.verdict(move, None, c.id)
        self._hook("retried", c, 0.0, f"MemoryLimitExceeded: {exc} (moved to {tf.on_oom!r})")


def _rebuild(kind: str, name: str, message: str, after: float | None) -> BaseException:
    """The child's exception as one the verdict logic reads the same way: the control
    exceptions as themselves, any other under its own qualified name."""
    if kind == "retry":
        return Retry(after=after, reason=message)
    if kind == "fail":
        return Fail(message)
    if kind == "bad":
        return BadArguments(message)
    cls = _REMOTE.get(name)
    if cls is None:
        cls = _REMOTE[name] = type(name.rpartition(".")[2] or "Error", (ChildError,), {})
        cls.__qualname__ = name
    return cls(message)


class ChildError(Exception):
    """An exception raised by a task in a child process, carried back as its type's
    qualified name and its message."""


_REMOTE: dict[str, type[ChildError]] = {}


def _death(tf: TaskFunction, child: Child, rc: int | None, limit: int | None) -> BaseException:
    peak = f"peak seen {format_size(child.peak)}" if child.peak else "no peak seen"
    if child.why == "memory":
        return MemoryLimitExceeded(
            f"{tf.name} went over its memory limit of {format_size(limit)} ({peak}); its "
            "child process was killed"
        )
    if child.why == "deadline":
        from ..chan import DeadlineExceeded

        return DeadlineExceeded(f"{tf.name} was still running at its caller's deadline")
    if child.why == "lease lost":
        return ProcessDied(f"{tf.name}: its lease was lost, so its child process was killed")
    if rc is not None and rc < 0:
        sig = -rc
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = f"signal {sig}"
        if sig == signal.SIGKILL and _oom_kills() > child.base_oom:
            return MemoryLimitExceeded(
                f"{tf.name}: the kernel's out-of-memory killer killed its child process "
                f"({peak}); give it a memory_limit below the machine's memory, or a bigger "
                "machine"
            )
        what = {
            "SIGSEGV": " (a segmentation fault: a crash in C code)",
            "SIGKILL": " (killed from outside the worker)",
            "SIGABRT": " (aborted: a failed assertion in C code?)",
        }.get(signame, "")
        return ProcessDied(f"{tf.name}: its child process died of {signame}{what}")
    return ProcessDied(
        f"{tf.name}: its child process exited with status {rc} before reporting back "
        "(os._exit or sys.exit in the handler?)"
    )


def _prior_attempts(headers: dict[str, str]) -> int:
    try:
        return max(0, int(headers.get(PRIOR_ATTEMPTS, "0")))
    except ValueError:
        return 0


def _oom_kills() -> int:
    """The cgroup's count of kernel OOM kills (cgroup v2), 0 where it cannot be read."""
    try:
        with open("/sys/fs/cgroup/memory.events", "rb") as f:
            for line in f:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
