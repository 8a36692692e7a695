"""Calls and events, side by side in one run: offload's call round trip on Redis, PostgreSQL
and SQLite against Celery on Redis (``.delay().get()``), Nameko RPC on RabbitMQ, and a
plain HTTP call (httpx to a uvicorn endpoint on loopback) as the floor; then publish to 3
subscribers against a plain ``send_many``.

    .venv/bin/python bench/bench_calls.py [--n 500] [--seconds 3] [--brokers redis,postgres,sqlite]
    .venv/bin/python bench/bench_calls.py --quick     # n=200, 1.5 s, 200 events: a few minutes

Round trip: send, run a no-op (a plain ``def``, and the same as ``async def``), result
back, with one idle worker process (p50, p99 over
``--n`` sequential calls after a warm-up). Throughput: calls per second with 32 caller
threads for ``--seconds`` against one worker process with 32 slots. Peers run from their
own virtualenvs, made from ``bench/requirements/`` on first use as ``bench/run.py`` makes
them: Celery from ``bench/.venvs/celery``, Nameko from ``bench/.venvs/nameko`` (or
``$NAMEKO_PYTHON``); a peer whose virtualenv cannot be made is skipped, and said so.
Redis database 15 only; PostgreSQL schema ``bench_calls``. Prints a table and the ratios
as its closing note.

This file is also the App the offload worker processes run (``bench.bench_calls:app``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import inspect
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from offload import App

ROOT = pathlib.Path(__file__).resolve().parents[1]
URLS = {
    "redis": "redis://127.0.0.1:6379/15?prefix=bench_calls",
    "postgres": "postgresql://127.0.0.1:5432/test?schema=bench_calls",
    "sqlite": "sqlite:///{tmp}/bench_calls.db",
}

app = App("bench_calls")
app.queue("rpc")
app.queue("rpc_async")
for _q in ("ev1", "ev2", "ev3"):
    app.queue(_q)


@app.task(queue="rpc", name="bench_calls.noop")
def noop(x: int = 0) -> int:
    return x


@app.task(queue="rpc_async", name="bench_calls.anoop")
async def anoop(x: int = 0) -> int:
    """The same no-op as ``async def``: it runs on the worker's event loop, with no hop to a
    handler thread and back."""
    return x


@app.on("bench.event", queue="ev1", name="bench_calls.sub1")
def sub1(payload: dict) -> None:
    pass


@app.on("bench.event", queue="ev2", name="bench_calls.sub2")
def sub2(payload: dict) -> None:
    pass


@app.on("bench.event", queue="ev3", name="bench_calls.sub3")
def sub3(payload: dict) -> None:
    pass


# -- measuring ------------------------------------------------------------------------------


def round_trips(call: Callable[[int], object], n: int, warmup: int = 30) -> dict[str, float]:
    """p50 and p99 in milliseconds of ``n`` sequential calls."""
    for i in range(warmup):
        call(i)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[int(len(times) * 0.99) - 1]}


def throughput(call: Callable[[int], object], seconds: float, callers: int = 32) -> float:
    """Calls per second completed by ``callers`` threads in ``seconds``."""
    stop = time.perf_counter() + seconds
    counts = [0] * callers

    def run(k: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            call(i)
            i += 1
        counts[k] = i

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        list(pool.map(run, range(callers)))
    return sum(counts) / (time.perf_counter() - t0)


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str] | None = None, cwd: pathlib.Path = ROOT
) -> Iterator[None]:
    p = subprocess.Popen(
        cmd, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not come up")
        time.sleep(0.1)


# the two functions above, for the peers' own interpreters (which have no offload)
_HEAD = "from __future__ import annotations\nimport concurrent.futures, statistics, time\n"
MEASURE = _HEAD + "\n".join(inspect.getsource(f) for f in (round_trips, throughput))


# -- systems --------------------------------------------------------------------------------


def bench_offload(
    broker: str, url: str, n: int, seconds: float, fn: Any = noop
) -> dict[str, float]:
    os.environ["OFFLOAD_BROKER"] = url
    queue = fn.queue
    a = App("bench_calls", broker=url)  # the caller's own App on this broker
    a.queue(queue)
    from offload.task import TaskFunction

    caller = TaskFunction(a.registry, fn.fn, fn.name, queue)
    a.registry.tasks[fn.name] = caller
    a.open()
    a.purge(queue)
    worker = [sys.executable, "-m", "offload", "worker", "bench.bench_calls:app", "-q", queue]
    out: dict[str, float] = {}
    with process([*worker, "-c", "32"], {"OFFLOAD_BROKER": url}):
        _until(lambda: caller.call_with(args=(1,), timeout=2.0) == 1)
        out |= round_trips(lambda i: caller.call_with(args=(i,), timeout=10.0), n)
        out["calls_per_s"] = throughput(
            lambda i: caller.call_with(args=(i,), timeout=30.0), seconds
        )
    a.close()
    return out


def bench_events(url: str, n: int) -> dict[str, float]:
    a = App("bench_calls_ev", broker=url)
    for q in ("ev1", "ev2", "ev3"):
        a.queue(q)
    subs = [a.on("bench.event", queue=q, name=f"sub-{q}")(tf.fn) for q, tf in
            (("ev1", sub1), ("ev2", sub2), ("ev3", sub3))]  # fmt: skip
    a.open()
    payload = {"id": 1, "email": "a@example.com"}
    for _ in range(20):
        a.publish("bench.event", payload)
    t0 = time.perf_counter()
    for _ in range(n):
        a.publish("bench.event", payload)
    publish_s = n / (time.perf_counter() - t0)
    calls = [((payload,), {})] * 3
    t0 = time.perf_counter()
    for _ in range(n):
        subs[0].send_many(calls)
    many_s = n / (time.perf_counter() - t0)
    for q in ("ev1", "ev2", "ev3"):
        a.purge(q)
    a.close()
    return {"events_per_s": publish_s, "send_many_3_per_s": many_s}


CELERY_APP = textwrap.dedent(
    """
    from celery import Celery
    app = Celery("bc", broker="redis://127.0.0.1:6379/15", backend="redis://127.0.0.1:6379/15")
    app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                    result_expires=300)

    @app.task(name="noop")
    def noop(x=0):
        return x
    """
)


def peer_python(name: str) -> str:
    """``bench/.venvs/<name>``'s python, made from its pins if missing (bench/run.py's)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from run import ensure_venv  # the bench runner; not imported by the worker processes
    finally:
        sys.path.pop(0)
    return ensure_venv(name)


def bench_celery(n: int, seconds: float, tmp: pathlib.Path) -> dict[str, float] | str:
    try:
        py = pathlib.Path(peer_python("celery"))
    except Exception as exc:
        return f"skipped: bench/.venvs/celery could not be made ({exc})"
    (tmp / "celery_calls.py").write_text(CELERY_APP)
    client = MEASURE + textwrap.dedent(
        f"""
        import json, sys, time
        from celery_calls import noop
        deadline = time.time() + 30
        while True:
            try:
                noop.delay(1).get(timeout=2); break
            except Exception:
                if time.time() > deadline: raise
        out = round_trips(lambda i: noop.delay(i).get(timeout=10), {n})
        out["calls_per_s"] = throughput(lambda i: noop.delay(i).get(timeout=30), {seconds})
        print(json.dumps(out))
        """
    )
    env = {"PYTHONPATH": str(tmp)}
    worker = [str(py), "-m", "celery", "-A", "celery_calls", "worker", "--pool", "threads",
              "--concurrency", "32", "--without-gossip", "--without-mingle",
              "--without-heartbeat", "-l", "WARNING"]  # fmt: skip
    with process(worker, env, cwd=tmp):
        res = subprocess.run([str(py), "-c", client], cwd=tmp, env={**os.environ, **env},
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    if res.returncode != 0:
        return f"Celery client failed: {res.stderr.strip().splitlines()[-1:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


NAMEKO_SERVICE = textwrap.dedent(
    """
    from nameko.rpc import rpc

    class Bench:
        name = "bench"

        @rpc
        def noop(self, x=0):
            return x
    """
)


def bench_nameko(n: int, seconds: float, tmp: pathlib.Path) -> dict[str, float] | str:
    py = os.environ.get("NAMEKO_PYTHON", "")
    if not py:
        try:
            py = peer_python("nameko")
        except Exception as exc:
            return f"skipped: bench/.venvs/nameko could not be made ({exc})"
    if not pathlib.Path(py).exists():
        return f"skipped: NAMEKO_PYTHON={py} does not exist"
    (tmp / "nameko_calls.py").write_text(NAMEKO_SERVICE)
    amqp = "amqp://guest:guest@127.0.0.1:5672/"
    client = MEASURE + textwrap.dedent(
        f"""
        import json, sys, threading, time
        from nameko.standalone.rpc import ClusterRpcProxy
        config = {{"AMQP_URI": {amqp!r}}}
        local = threading.local()
        proxies = []
        def rpc():
            p = getattr(local, "p", None)
            if p is None:
                ctx = ClusterRpcProxy(config, timeout=30)
                p = local.p = ctx.start(); proxies.append(ctx)
            return p
        deadline = time.time() + 30
        while True:
            try:
                rpc().bench.noop(1); break
            except Exception:
                if time.time() > deadline: raise
                time.sleep(0.2)
        out = round_trips(lambda i: rpc().bench.noop(i), {n})
        out["calls_per_s"] = throughput(lambda i: rpc().bench.noop(i), {seconds})
        for c in proxies:
            c.stop()
        print(json.dumps(out))
        """
    )
    env = {"PYTHONPATH": str(tmp)}
    worker = [py, "-m", "nameko", "run", "nameko_calls", "--broker", amqp]
    with process(worker, env, cwd=tmp):
        res = subprocess.run([py, "-c", client], cwd=tmp, env={**os.environ, **env},
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    if res.returncode != 0:
        return f"Nameko client failed: {res.stderr.strip().splitlines()[-1:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


HTTP_APP = textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def noop(request):
        return JSONResponse(int(request.query_params.get("x", 0)))

    app = Starlette(routes=[Route("/noop", noop)])
    """
)


def bench_http(n: int, seconds: float, tmp: pathlib.Path) -> dict[str, float]:
    import httpx

    (tmp / "http_calls.py").write_text(HTTP_APP)
    port = _free_port()
    server = [sys.executable, "-m", "uvicorn", "http_calls:app", "--port", str(port),
              "--log-level", "warning", "--no-access-log"]  # fmt: skip
    local = threading.local()

    def call(i: int) -> object:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = httpx.Client(base_url=f"http://127.0.0.1:{port}")
        return c.get("/noop", params={"x": i}).json()

    with process(server, {"PYTHONPATH": str(tmp)}, cwd=tmp):
        _until(lambda: call(1) == 1)
        out = round_trips(call, n)
        out["calls_per_s"] = throughput(call, seconds)
    return out


# -- the run --------------------------------------------------------------------------------


Row = dict[str, float] | str
CELERY, NAMEKO, HTTP = (
    "Celery redis (.delay().get())",
    "Nameko RPC rabbitmq",
    "HTTP httpx->uvicorn (floor)",
)


def one_round(opts: argparse.Namespace, tmp: pathlib.Path, events: bool) -> dict[str, Row]:
    """Every system once, in the same order: offload on each broker, then the peers."""
    rows: dict[str, Row] = {}
    for broker in opts.brokers.split(","):
        url = URLS[broker].format(tmp=tmp)
        print(f"offload on {broker} ...", file=sys.stderr, flush=True)
        rows[f"offload {broker}"] = bench_offload(broker, url, opts.n, opts.seconds)
        print(f"offload on {broker}, async def ...", file=sys.stderr, flush=True)
        rows[f"offload {broker} async"] = bench_offload(broker, url, opts.n, opts.seconds, anoop)
        if events:
            rows[f"events {broker}"] = bench_events(url, opts.events)
    print("Celery on Redis ...", file=sys.stderr, flush=True)
    rows[CELERY] = bench_celery(opts.n, opts.seconds, tmp)
    print("Nameko on RabbitMQ ...", file=sys.stderr, flush=True)
    rows[NAMEKO] = bench_nameko(opts.n, opts.seconds, tmp)
    print("plain HTTP ...", file=sys.stderr, flush=True)
    rows[HTTP] = bench_http(opts.n, opts.seconds, tmp)
    return rows


def ratios(rows: dict[str, Row], broker: str) -> dict[str, float]:
    """The goal's ratios for offload on ``broker`` from one round's figures, by label
    (``{}`` where the number goes)."""
    r, http, celery, nameko = (rows.get(k) for k in (f"offload {broker}", HTTP, CELERY, NAMEKO))
    out: dict[str, float] = {}
    if not isinstance(r, dict):
        return out
    if isinstance(http, dict):
        out["p50 {}x HTTP's"] = r["p50_ms"] / http["p50_ms"]
    if isinstance(celery, dict):
        out["Celery's p50 is {}x offload's"] = celery["p50_ms"] / r["p50_ms"]
        out["{}x Celery's calls/s"] = r["calls_per_s"] / celery["calls_per_s"]
    if isinstance(nameko, dict):
        out["Nameko's p50 is {}x offload's"] = nameko["p50_ms"] / r["p50_ms"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--brokers", default="redis,postgres,sqlite")
    ap.add_argument("--quick", action="store_true", help="n=200, 1.5 s, 200 events")
    ap.add_argument(
        "--rounds", type=int, default=1,
        help="measure every system this many times, one after the other; each figure and "
        "each ratio is the median of the rounds' (on a shared machine, load that comes and "
        "goes then weighs on every system alike)",
    )  # fmt: skip
    opts = ap.parse_args()
    if opts.quick:
        opts.n, opts.seconds, opts.events = 200, 1.5, 200
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-calls-"))
    rounds = [one_round(opts, tmp, events=i == 0) for i in range(max(1, opts.rounds))]
    names = [k for k in rounds[0] if not k.startswith("events ")]

    def median(name: str, key: str) -> float | None:
        got = [r[name][key] for r in rounds if isinstance(r.get(name), dict)]  # type: ignore[index]
        return statistics.median(got) if got else None

    print(f"\ncall round trip (no-op), n={opts.n} sequential; throughput with 32 callers;"
          f" median of {len(rounds)} round(s)")  # fmt: skip
    print(f"{'system':34} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9}")
    for name in names:
        p50, p99, cps = (median(name, k) for k in ("p50_ms", "p99_ms", "calls_per_s"))
        if p50 is None or p99 is None or cps is None:
            print(f"{name:34} {rounds[0][name]}")
        else:
            print(f"{name:34} {p50:8.2f} {p99:8.2f} {cps:9.0f}")
    print(f"\npublish to 3 subscribers, n={opts.events}, one by one (no worker)")
    print(f"{'broker':10} {'events/s':>9} {'send_many(3)/s':>15} {'ratio':>6}")
    for broker in opts.brokers.split(","):
        e = rounds[0][f"events {broker}"]
        assert isinstance(e, dict)
        ratio = e["events_per_s"] / e["send_many_3_per_s"]
        print(f"{broker:10} {e['events_per_s']:9.0f} {e['send_many_3_per_s']:15.0f} {ratio:6.2f}")

    print("\nratios, each from one round's figures, median over the rounds (goal: Celery's p50")
    print("3x offload's or more; offload's on Redis within 1.5x of HTTP's):")
    for broker in opts.brokers.split(","):
        for row in (broker, f"{broker} async"):
            each = [ratios(r, row) for r in rounds]
            parts = []
            for key in each[0]:
                values = [x[key] for x in each if key in x]
                spread = (
                    f" (rounds: {min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""
                )
                parts.append(key.format(f"{statistics.median(values):.2f}") + spread)
            print(f"  offload {row}: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
