"""Fixtures for calls: a worker for the calls app, in this process (on a thread) or as
``offload worker`` subprocesses, on every broker the machine has."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from offload import App, Worker

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_app(url: str, sink: pathlib.Path) -> App:
    """The calls app bound to ``url`` (it reads OFFLOAD_BROKER when made)."""
    saved = {k: os.environ.get(k) for k in ("OFFLOAD_BROKER", "CALLS_SINK")}
    os.environ.update({"OFFLOAD_BROKER": url, "CALLS_SINK": str(sink)})
    try:
        import tests.calls.callapp as callapp

        return importlib.reload(callapp).app
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class ThreadWorker:
    """A Worker running on its own event loop in a thread; stopped on exit."""

    def __init__(self, app: App, **kwargs) -> None:
        self.worker = Worker(app, **kwargs)

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.worker.run())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> ThreadWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.worker.stop, True)
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def calls_app(broker_url, tmp_path):
    app = load_app(broker_url, tmp_path / "sink.log")
    yield app
    app.close()


@pytest.fixture
def sink(tmp_path) -> pathlib.Path:
    return tmp_path / "sink.log"


def lines(sink: pathlib.Path) -> list[str]:
    return sink.read_text().splitlines() if sink.exists() else []


@pytest.fixture
def worker_procs(broker_url, sink):
    """Start ``offload worker`` subprocesses of the calls app: ``start(*args)``."""
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "OFFLOAD_BROKER": broker_url, "CALLS_SINK": str(sink)}

    def start(*args: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "tests.calls.callapp:app", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
