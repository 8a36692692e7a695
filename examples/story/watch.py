"""``offload run`` as the story drives it, and what it samples from outside: the
supervisor's log lines (time-stamped as they arrive), and every half second, per pool,
the worker processes alive and the resident memory of each with its children (the
process executor's), read from ``/proc``.

A worker belongs to a pool by the supervisor's own line ``[offload] started POOL.N (pid
P)``; it is alive while ``/proc/P`` exists and is not a zombie.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

STARTED = re.compile(r"\[offload\] started (?P<pool>[\w.-]+)\.(?P<n>\d+) \(pid (?P<pid>\d+)\)")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    return rest[0], int(rest[1])


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _children() -> dict[int, list[int]]:
    """Parent pid -> its children's pids, for every process of the machine."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            kids.setdefault(st[1], []).append(int(name))
    return kids


class Supervisor:
    """One ``offload run`` process, its log kept in ``lines`` as (epoch, text)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self.pool_of: dict[int, str] = {}
        self._log = open(log_path, "w")  # noqa: SIM115 - closed by stop()
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            now = time.time()
            self.lines.append((now, line))
            self._log.write(f"{now:.3f} {line}\n")
            self._log.flush()
            if m := STARTED.search(line):
                self.pool_of[int(m["pid"])] = m["pool"]

    def seen(self, text: str, after: float = 0.0) -> list[float]:
        return [t for t, line in list(self.lines) if text in line and t >= after]

    def wait_for(self, text: str, timeout: float, after: float = 0.0) -> float:
        """When ``text`` first showed up in the log (after ``after``); SystemExit with the
        log's tail when it does not within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while not (hits := self.seen(text, after)):
            if time.monotonic() > end or self.proc.poll() is not None:
                tail = "\n".join(x for _, x in self.lines[-25:])
                raise SystemExit(f"story: no {text!r} from offload run in {timeout}s:\n{tail}")
            time.sleep(0.05)
        return hits[0]

    def hup(self) -> float:
        """A rolling deploy: SIGHUP to ``offload run``; returns when it was sent."""
        self.proc.send_signal(signal.SIGHUP)
        return time.time()

    def stop(self, timeout: float = 60.0) -> int | None:
        """Drain every worker (SIGTERM) and wait for the supervisor to exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self._log.close()
        return self.proc.returncode


class Sampler:
    """Every ``every`` seconds, per pool: workers alive, and the summed RSS (bytes) of
    those workers and all their descendants."""

    def __init__(self, sup: Supervisor, every: float = 0.5) -> None:
        self.sup, self.every = sup, every
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            kids = _children()
            row: dict[str, Any] = {"t": time.time(), "workers": {}, "rss": {}}
            for pid, pool in list(self.sup.pool_of.items()):
                st = _stat(pid)
                if st is None or st[0] == "Z":
                    continue
                row["workers"][pool] = row["workers"].get(pool, 0) + 1
                todo, total = [pid], 0
                while todo:
                    p = todo.pop()
                    total += _rss(p)
                    todo.extend(kids.get(p, []))
                row["rss"][pool] = row["rss"].get(pool, 0) + total
            self.rows.append(row)
            self._stop.wait(self.every)

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join()
        return self.rows


def offload(*args: str, env: dict[str, str], cwd: str, check: bool = True) -> str:
    """Run one ``offload`` command (this interpreter's), returning its output; a failure
    stops the story with the command's own message."""
    argv = [sys.executable, "-m", "offload", *args]
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(
            f"story: `offload {' '.join(args)}` failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}"
        )
    return done.stdout
