"""What bench_http.py and bench_push.py share: a fresh broker namespace per step and its
clean-up, a free loopback port, starting a server process and waiting until it answers,
and the push receiver (``uvicorn _receiver:receiver``: reads the body, answers 204).

Redis steps use database 14 (not 15, which the peers' benchmarks flush), keys under a
fresh prefix; PostgreSQL steps a fresh schema of database ``test``; SQLite a fresh file.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

__all__ = [
    "HERE",
    "REDIS_DB",
    "bench_env",
    "broker_url",
    "cleanup",
    "free_port",
    "receiver",
    "start_receiver",
    "wait_until_up",
]

HERE = pathlib.Path(__file__).resolve().parent
REDIS_DB = 14
PG = "postgresql://postgres@127.0.0.1:5432/test"


def broker_url(kind: str, tmp: str, tag: str) -> str:
    """A URL of ``kind`` in a namespace of its own (``tag`` + random), under ``tmp`` for
    SQLite."""
    ns = tag + uuid.uuid4().hex[:10]
    if kind == "sqlite":
        return f"sqlite:///{tmp}/{ns}.db"
    if kind == "redis":
        return f"redis://127.0.0.1:6379/{REDIS_DB}?prefix={ns}"
    if kind == "postgres":
        return f"{PG}?schema={ns}"
    raise SystemExit(f"--brokers: {kind!r} is not sqlite, redis or postgres")


def cleanup(kind: str, url: str) -> None:
    """Drop the step's namespace so the benchmark leaves nothing behind."""
    if kind == "redis":
        import redis

        prefix = url.rsplit("prefix=", 1)[1]
        r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        keys = list(r.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
    elif kind == "postgres":
        import psycopg

        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_env(**extra: str) -> dict[str, str]:
    """This environment, with bench/ importable by the child and ``extra`` set."""
    path = str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return dict(os.environ, PYTHONPATH=path, **extra)


def wait_until_up(
    proc: subprocess.Popen, probe: Callable[[], bool], what: str, seconds: float = 30.0
) -> subprocess.Popen:
    """Return ``proc`` once ``probe()`` is true; kill it and exit if it dies or takes
    longer than ``seconds``."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise SystemExit(f"{what} exited: {err}")
        try:
            if probe():
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{what} did not start within {seconds:g} s")


async def receiver(scope, receive, send):
    """The push receiver: reads the body, answers 204."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def start_receiver(port: int) -> subprocess.Popen:
    """:func:`receiver` under uvicorn on ``127.0.0.1:port``, once it answers."""
    import httpx

    cmd = [sys.executable, "-m", "uvicorn", "_receiver:receiver", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "error", "--no-access-log"],
        env=bench_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    return wait_until_up(
        proc, lambda: httpx.post(url, content=b"x", timeout=1).status_code == 204, "receiver"
    )
