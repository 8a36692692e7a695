"""What the autoscaling and reload tests share: ``offload run`` on ``scaleapp`` with a
topology written for the test, its log read by a thread (each line with the time it came),
and the ledger the tasks write into, on the broker's own server."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import POSTGRES_URL, REDIS_URL, _drop_pg_schema, _drop_redis_prefix, make_url

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = "tests.services.scaleapp:app"


class Run:
    """One namespace, one ledger, the ``offload`` processes started on them."""

    def __init__(self, kind: str, tmp: pathlib.Path) -> None:
        self.kind = kind
        self.url = make_url(kind, tmp)
        self.tmp = tmp
        tag = "scale_" + uuid.uuid4().hex[:10]
        if kind == "redis":
            prefix = re.search(r"prefix=([^&]+)", self.url).group(1)  # dropped with it
            self.ledger = f"{REDIS_URL}#{prefix}:ledger"
        else:
            import psycopg

            self.table = tag
            with psycopg.connect(POSTGRES_URL, autocommit=True) as c:
                c.execute(f"CREATE TABLE {tag} (n int PRIMARY KEY, pid int, runs int)")
            self.ledger = f"{POSTGRES_URL}#{tag}"
        self.env = {
            **os.environ,
            "OFFLOAD_BROKER": self.url,
            "SCALE_LEDGER": self.ledger,
            "OFFLOAD_TOPOLOGY": "",
            "PYTHONUNBUFFERED": "1",
        }
        saved = {k: os.environ.get(k) for k in ("OFFLOAD_BROKER", "SCALE_LEDGER")}
        os.environ.update(OFFLOAD_BROKER=self.url, SCALE_LEDGER=self.ledger)
        try:
            import importlib

            import tests.services.scaleapp as mod

            self.mod = importlib.reload(mod)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.app = self.mod.app
        self.procs: list[subprocess.Popen[bytes]] = []
        self.lines: list[tuple[float, str]] = []

    def topology(self, body: str) -> str:
        path = self.tmp / f"topology-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(body)
        return str(path)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [sys.executable, "-m", "offload", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

        def read() -> None:
            assert p.stdout is not None
            for raw in p.stdout:
                self.lines.append((time.monotonic(), raw.decode("utf-8", "replace").rstrip()))

        threading.Thread(target=read, daemon=True).start()
        self.procs.append(p)
        return p

    def log(self, pattern: str) -> list[tuple[float, re.Match[str]]]:
        """Every line matching ``pattern`` (a regex searched in the line), with its time."""
        found = []
        for t, line in list(self.lines):
            m = re.search(pattern, line)
            if m:
                found.append((t, m))
        return found

    def wait_for(self, pred: Callable[[], object], timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.05)
        tail = "\n".join(line for _, line in self.lines[-40:])
        raise AssertionError(f"{what}: not within {timeout}s; the last lines:\n{tail}")

    def ran(self) -> dict[int, tuple[int, int]]:
        """The ledger: task number -> (pid of its first run, runs)."""
        _, _, name = self.ledger.partition("#")
        if self.kind == "redis":
            import redis

            r = redis.Redis.from_url(REDIS_URL)
            try:
                ns = {int(n) for n in r.smembers(name)}
                pids = {int(k): int(v) for k, v in r.hgetall(f"{name}:pid").items()}
                return {n: (pids.get(n, 0), 1) for n in ns}
            finally:
                r.close()
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as c:
            return {
                n: (pid, runs) for n, pid, runs in c.execute(f"SELECT n, pid, runs FROM {name}")
            }

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
        self.app.close()
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(POSTGRES_URL, autocommit=True) as c:
                c.execute(f"DROP TABLE IF EXISTS {self.table}")
            _drop_pg_schema(self.url)
        else:
            _drop_redis_prefix(self.url)


@pytest.fixture
def scale_run(tmp_path) -> Iterator[Callable[[str], Run]]:
    made: list[Run] = []

    def make(kind: str) -> Run:
        r = Run(kind, tmp_path)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()
