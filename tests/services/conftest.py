"""Worker processes on the split shop app (``splitapp``), and fresh broker namespaces."""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import _drop_pg_schema, _drop_redis_prefix, make_url

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = "tests.services.splitapp:app"
TOPOLOGY = str(pathlib.Path(__file__).with_name("split.toml"))


class Shop:
    """The split shop on one broker namespace: start ``offload`` processes on it, send
    orders from this process, read what the handlers wrote to the sink file."""

    def __init__(self, url: str, tmp: pathlib.Path) -> None:
        self.url = url
        self.sink = tmp / f"sink-{len(list(tmp.iterdir()))}.log"
        self.env = {
            **os.environ,
            "OFFLOAD_BROKER": url,
            "SPLIT_SINK": str(self.sink),
            "OFFLOAD_TOPOLOGY": "",
            "PYTHONUNBUFFERED": "1",
        }
        saved = os.environ.get("OFFLOAD_BROKER")
        os.environ["OFFLOAD_BROKER"] = url  # the App reads its broker URL when made
        try:
            import tests.services.splitapp as mod

            self.mod = importlib.reload(mod)
        finally:
            if saved is None:
                os.environ.pop("OFFLOAD_BROKER", None)
            else:
                os.environ["OFFLOAD_BROKER"] = saved
        self.app = self.mod.app
        self.procs: list[subprocess.Popen[bytes]] = []
        self.output: dict[int, list[str]] = {}

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """``offload ARGS`` as a child process; its merged output is collected by a thread."""
        p = subprocess.Popen(
            [sys.executable, "-m", "offload", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        lines: list[str] = []
        self.output[p.pid] = lines

        def read() -> None:
            assert p.stdout is not None
            for raw in p.stdout:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()
        self.procs.append(p)
        return p

    def events(self) -> list[tuple[str, int, int, int, str]]:
        """(event, key, attempt, pid, queue) per line the handlers wrote."""
        if not self.sink.exists():
            return []
        out = []
        for line in self.sink.read_text().splitlines():
            ev, key, attempt, pid, queue = line.split()
            out.append((ev, int(key), int(attempt), int(pid), queue))
        return out

    def wait_for(self, pred: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.05)
        logs = {pid: lines[-15:] for pid, lines in self.output.items()}
        raise AssertionError(f"{what or 'condition'} not met in {timeout}s; logs: {logs}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        self.app.close()


@pytest.fixture
def shop(tmp_path) -> Iterator[Callable[[str], Shop]]:
    """``shop(kind)``: a Shop on a fresh namespace of that broker (dropped afterwards)."""
    made: list[tuple[str, str, Shop]] = []

    def make(kind: str) -> Shop:
        url = make_url(kind, tmp_path)
        s = Shop(url, tmp_path)
        made.append((kind, url, s))
        return s

    yield make
    for kind, url, s in made:
        s.close()
        if kind == "postgres":
            _drop_pg_schema(url)
        elif kind == "redis":
            _drop_redis_prefix(url)
