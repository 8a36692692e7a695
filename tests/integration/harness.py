"""Worker processes for integration tests: start ``offload worker`` subprocesses on the
procapp test app and read what their handlers wrote to the sink file."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from offload import App

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Harness:
    def __init__(self, url: str, tmp: pathlib.Path, **env: str) -> None:
        self.sink = tmp / "sink.log"
        self.env = {**os.environ, "OFFLOAD_BROKER": url, "PROC_SINK": str(self.sink), **env}
        self.procs: list[subprocess.Popen] = []
        os.environ.update({"PROC_SINK": str(self.sink)})
        env = {"OFFLOAD_BROKER": url, **env}  # the App reads its broker URL when made
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            import importlib

            import tests.integration.procapp as procapp

            self.mod = importlib.reload(procapp)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.app: App = self.mod.app

    def worker(self, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "tests.integration.procapp:app", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        return p

    def events(self) -> list[tuple[str, str, int, float, int]]:
        if not self.sink.exists():
            return []
        out = []
        # the last line may be one a worker is writing right now: only whole lines count
        for line in self.sink.read_text().split("\n")[:-1]:
            ev, key, pid, t, attempt = line.split()
            out.append((ev, key, int(pid), float(t), int(attempt)))
        return out

    def wait_for(self, pred, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.events()):
                return
            time.sleep(0.02)
        raise AssertionError(f"condition not met in {timeout}s; events: {self.events()}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        self.app.close()


@pytest.fixture
def harness(broker_url, tmp_path):
    made = []

    def make(**env):
        h = Harness(broker_url, tmp_path, **env)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
