"""HTTP enqueue against ``send``, side by side in one run.

Per broker: ``send`` one by one from one thread (the baseline), then task creation over
HTTP by 16 concurrent clients against a live ``offload serve`` in its own process, through
the JSON API (``POST /api/v1/tasks``) and, when the Cloud Tasks surface is built, its
``tasks.create``. Prints tasks/s and the ratio to ``send``; the goal on Redis is at least
0.5x. Beside each rate, the server's CPU time per request (from /proc, Linux): a cost the
machine's other load changes far less than a rate. Every task is really enqueued (the
queue's count is checked afterwards).

    .venv/bin/python bench/bench_http.py                      # Redis, 3 s per step
    .venv/bin/python bench/bench_http.py --brokers sqlite,redis,postgres --seconds 5
    .venv/bin/python bench/bench_http.py --named            # every create names its task

Needs Redis on 127.0.0.1:6379 (database 14, keys under a fresh prefix, deleted after) and,
for postgres, PostgreSQL on 127.0.0.1:5432 (database ``test``, a fresh schema, dropped after).
Loopback only. The clients are 16 keep-alive connections driven by a minimal HTTP/1.1
client in this process; the server is one uvicorn process (the machine's cores are shared,
so the numbers are what one server process does beside its clients).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from _receiver import bench_env, broker_url, cleanup, free_port, wait_until_up

from offload import App

TOKEN = "bench-" + uuid.uuid4().hex
#: the App the server process imports (``bench_http:app``); the broker comes from
#: $OFFLOAD_BROKER, set by this script for the server it starts
app = App("benchhttp")
app.queue("bench", lease=60.0)


@app.task(queue="bench", name="benchhttp.noop")
def noop(i: int) -> None:
    return None


def bench_send(url: str, seconds: float) -> float:
    """``send`` one by one from one thread: tasks per second."""
    a = App("benchhttp", broker=url)
    a.queue("bench", lease=60.0)
    tf = a.task(queue="bench", name="benchhttp.noop")(noop.fn)
    for i in range(200):  # connect, declare, warm up
        tf.send(i)
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(100):
            tf.send(n)
            n += 1
        if time.perf_counter() >= deadline:
            break
    rate = n / (time.perf_counter() - t0)
    a.purge("bench")
    a.close()
    return rate


def start_server(url: str, port: int, workers: int = 1) -> subprocess.Popen:
    env = bench_env(OFFLOAD_BROKER=url, OFFLOAD_API_TOKENS=TOKEN)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "offload",
            "serve",
            "bench_http:app",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    import httpx

    health = f"http://127.0.0.1:{port}/healthz"
    return wait_until_up(proc, lambda: httpx.get(health, timeout=1).status_code == 200, "server")


async def http_clients(
    port: int, path: str, body_of, clients: int, seconds: float
) -> tuple[float, int]:
    """``clients`` concurrent keep-alive connections, each posting one task per request and
    waiting for its answer: (tasks/s, requests made). The client is a minimal HTTP/1.1
    writer and reader on asyncio streams: a general client (httpx) costs this process
    several times the server's CPU per request, and the load generator must not be what is
    measured."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    )

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, i: int) -> None:
        body = body_of(i)
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await reader.readline()
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        answer = await reader.readexactly(length)
        status = int(status_line.split()[1])
        if status not in (200, 201):
            raise SystemExit(f"{path}: {status} {answer[:300]!r}")

    conns = [await connect() for _ in range(clients)]
    done = 0
    try:
        for k, (r, w) in enumerate(conns):  # warm up every connection
            for j in range(5):
                await one(r, w, -1 - k * 5 - j)
        stop = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal done
            r, w = conns[k]
            i = k
            while time.perf_counter() < stop:
                await one(r, w, i)
                done += 1
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        return done / (time.perf_counter() - t0), done + clients * 5
    finally:
        for _, w in conns:
            w.close()


#: with --named, every create carries a name of its own (checked for duplicates by the
#: server: the Cloud Tasks surface looks each one up before it enqueues)
NAMED = {"on": False, "run": uuid.uuid4().hex[:8]}
CT_PARENT = "projects/bench/locations/local/queues/bench"


def api_body(i: int) -> bytes:
    body = {"task": "benchhttp.noop", "args": [i]}
    if NAMED["on"]:
        body["name"] = f"api-{NAMED['run']}-{i}"
    return json.dumps(body).encode()


def cloudtasks_body(i: int) -> bytes:
    payload = base64.b64encode(json.dumps({"i": i}).encode()).decode()
    task = {"httpRequest": {"url": "http://127.0.0.1:9/x", "httpMethod": "POST", "body": payload}}
    if NAMED["on"]:
        task["name"] = f"{CT_PARENT}/tasks/ct-{NAMED['run']}-{i}"
    return json.dumps({"task": task}).encode()


def has_cloudtasks() -> bool:
    try:
        import offload.http.cloudtasks  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def server_cpu(pid: int) -> float | None:
    """CPU seconds the server process and its children (``--workers``) used so far, from
    /proc (None elsewhere): per request, a cost the machine's other load changes little,
    unlike a rate."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                total += sum(server_cpu(int(c)) or 0.0 for c in f.read().split())
        return total
    except (OSError, ValueError, IndexError):
        return None


#: tasks created over HTTP in this broker's run so far (checked against the queue)
CREATED = {"n": 0}


def measured(server: subprocess.Popen, port: int, path: str, body_of, clients: int, seconds: float):
    """(tasks/s, server CPU microseconds per request or None)."""
    before = server_cpu(server.pid)
    rate, requests = asyncio.run(http_clients(port, path, body_of, clients, seconds))
    after = server_cpu(server.pid)
    CREATED["n"] += requests
    if before is None or after is None:
        return rate, None
    return rate, (after - before) / requests * 1e6


def check_created(url: str) -> None:
    """Every 200/201 the clients saw is a task in the queue."""
    a = App("benchhttp", broker=url)
    a.queue("bench", lease=60.0)
    try:
        s = a.stats("bench")
        if s.ready + s.scheduled != CREATED["n"]:
            raise SystemExit(f"{s.ready + s.scheduled} tasks queued, {CREATED['n']} created")
    finally:
        a.close()


def run_broker(
    kind: str, seconds: float, clients: int, server_workers: list[int]
) -> dict[str, float | None]:
    tmp = tempfile.mkdtemp(prefix="bench-http-")
    url = broker_url(kind, tmp, "bh")
    try:
        out: dict[str, float | None] = {"send": bench_send(url, seconds)}
        CREATED["n"] = 0
        for workers in server_workers:
            port = free_port()
            server = start_server(url, port, workers)
            try:
                path = "/api/v1/tasks"
                rate, cpu = measured(server, port, path, api_body, clients, seconds)
                out[f"api_w{workers}"], out[f"api_us_w{workers}"] = rate, cpu
                out[f"cloudtasks_w{workers}"] = out[f"cloudtasks_us_w{workers}"] = None
                if has_cloudtasks():
                    path = f"/v2/{CT_PARENT}/tasks"
                    rate, cpu = measured(server, port, path, cloudtasks_body, clients, seconds)
                    out[f"cloudtasks_w{workers}"], out[f"cloudtasks_us_w{workers}"] = rate, cpu
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
        check_created(url)
        return out
    finally:
        cleanup(kind, url)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", default="redis", help="comma-separated: sqlite,redis,postgres")
    p.add_argument("--seconds", type=float, default=3.0, help="per step")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument(
        "--server-workers", default="1,2", help="comma-separated `offload serve --workers` values"
    )
    p.add_argument("--named", action="store_true", help="every HTTP create names its task")
    args = p.parse_args()
    NAMED["on"] = args.named
    server_workers = [int(w) for w in args.server_workers.split(",")]
    rows = []
    for kind in [b.strip() for b in args.brokers.split(",") if b.strip()]:
        r = run_broker(kind, args.seconds, args.clients, server_workers)
        rows.append((kind, r))
        print(json.dumps({"broker": kind, **r}), flush=True)
    print()
    cols = ("send/s", "API/s", "ratio", "us/req", "CT/s", "ratio", "us/req")
    print(f"{'broker':9} {'server':>7} " + " ".join(f"{c:>8}" for c in cols))

    def us(x: float | None) -> str:
        return f"{x:8.0f}" if x is not None else f"{'-':>8}"

    for kind, r in rows:
        send = r["send"] or 0.0
        for w in server_workers:
            api, ct = r[f"api_w{w}"] or 0.0, r[f"cloudtasks_w{w}"]
            api_cols = f"{api:8.0f} {api / send:8.2f} {us(r[f'api_us_w{w}'])}"
            ct_cols = f"{ct:8.0f} {ct / send:8.2f}" if ct else f"{'-':>8} {'-':>8}"
            ct_cols += f" {us(r[f'cloudtasks_us_w{w}'])}"
            print(f"{kind:9} {w:>5} p {send:8.0f} {api_cols} {ct_cols}")
    print(
        f"\n({args.clients} HTTP clients against one thread calling send; server: "
        "`offload serve --workers N` processes; us/req: the server's CPU per request; "
        "goal on redis: >= 0.5x send"
        f"{'; HTTP creates named' if args.named else ''})"
    )


if __name__ == "__main__":
    main()
