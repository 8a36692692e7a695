"""The story's client side, one process per stage: the web front sending signups at a
rate profile, the account page fanning out under a deadline, a poller reading each pool's
queues, and at the end the count of what ran, from the ledger and the dead letters.

    python driver.py CONFIG.json RESULT.json

It runs in its own process because the demo App takes its broker from
``$OFFLOAD_BROKER`` when it is imported (SQLite for the monolith, Redis for the split).
CONFIG holds ``phases`` ([[seconds, signups per second, searches per second], ...]),
``start_at`` (epoch seconds; the orchestrator sends SIGHUP on the same clock),
``page_rate`` (pages per second), ``page_timeout``, ``search_timeout``, ``topology`` (path
or null), ``drain_timeout``.

Searches are the web front's search box: each is a call of ``search_products`` (a task
with a result) under its own deadline, recorded with its latency and outcome. They are
most of the shop's traffic and all of it lands on the web pool: the signups, each of
which holds the indexer's memory for seconds, are few.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import sys
import threading
import time
from typing import Any

import story_shop
from story_shop import PAGE_USERS, account_page, app, front_signup, search_products

from offload import DeadlineExceeded
from offload.supervisor import read_signals

QUERIES = ("shoes", "red", "coat")


def send_signups(phases: list[list[float]], start_at: float, sent: dict[int, float]) -> None:
    """Signups at each phase's rate, in 50 ms ticks, recording when each user was sent."""
    uid, t, owed = 0, start_at, 0.5  # the first signup half an interval in
    for seconds, rate, _ in phases:
        end = t + seconds
        while (now := time.time()) < end:
            owed += rate * 0.05
            while owed >= 1:
                uid += 1
                sent[uid] = time.time()
                front_signup(uid)
                owed -= 1
            time.sleep(max(0.0, 0.05 - (time.time() - now)))
        t = end


async def pages(rate: float, timeout: float, until: float, out: list[dict[str, Any]]) -> None:
    """One account page every 1/rate seconds, each its own asyncio task (pages overlap
    when the services are slow, as a web server's requests do)."""

    async def one(n: int) -> None:
        t0 = time.time()
        try:
            await account_page(PAGE_USERS + n, list(QUERIES[: 1 + n % 3]), timeout)
            outcome = "ok"
        except DeadlineExceeded:
            outcome = "deadline"
        except Exception as exc:  # reported, never hidden: a page's other failures
            outcome = f"error: {type(exc).__name__}: {exc}"[:200]
        out.append({"t": t0, "latency": time.time() - t0, "outcome": outcome})

    running: set[asyncio.Task[None]] = set()
    n = 0
    while time.time() < until:
        n += 1
        task = asyncio.create_task(one(n))
        running.add(task)
        task.add_done_callback(running.discard)
        await asyncio.sleep(1.0 / rate)
    if running:
        await asyncio.wait(running)


async def searches(
    phases: list[list[float]], start_at: float, timeout: float, out: list[dict[str, Any]]
) -> None:
    """Search calls at each phase's rate (50 ms ticks), each its own asyncio task under its
    own deadline: answered, ``DeadlineExceeded`` or another error, with its latency."""

    async def one(n: int) -> None:
        t0 = time.time()
        try:
            await search_products.call_with_async(args=(QUERIES[n % 3],), timeout=timeout)
            outcome = "ok"
        except DeadlineExceeded:
            outcome = "deadline"
        except Exception as exc:  # reported, never hidden
            outcome = f"error: {type(exc).__name__}: {exc}"[:200]
        out.append({"t": t0, "latency": time.time() - t0, "outcome": outcome})

    running: set[asyncio.Task[None]] = set()
    n, t, owed = 0, start_at, 0.0
    for seconds, _, rate in phases:
        end = t + seconds
        while (now := time.time()) < end:
            owed += rate * 0.05
            while owed >= 1:
                n += 1
                task = asyncio.create_task(one(n))
                running.add(task)
                task.add_done_callback(running.discard)
                owed -= 1
            await asyncio.sleep(max(0.0, 0.05 - (time.time() - now)))
        t = end
    if running:
        await asyncio.wait(running)


def poll(queues_of: dict[str, tuple[str, ...]], stop: threading.Event, out: list) -> None:
    """Every 0.5 s, per pool: ready, in flight and the oldest ready task's age (the
    autoscaler's own signals, read the way the supervisor reads them)."""
    every = [q for qs in queues_of.values() for q in qs]
    while not stop.is_set():
        try:
            sig = read_signals(app, every)
        except Exception:  # a slow broker read is a gap in the plot, not a failure
            stop.wait(0.5)
            continue
        row: dict[str, Any] = {"t": time.time()}
        for pool, qs in queues_of.items():
            ages = [sig[q].oldest_ready_age for q in qs if sig[q].oldest_ready_age is not None]
            row[pool] = {
                "ready": sum(sig[q].ready for q in qs),
                "in_flight": sum(sig[q].in_flight for q in qs),
                "oldest_ready_age": max(ages) if ages else 0.0,
            }
        out.append(row)
        stop.wait(0.5)


def unfinished() -> int:
    """Tasks still ready, scheduled or leased on any queue of the app."""
    return sum((s := app.stats(q)).ready + s.scheduled + s.leased for q in app.queues)


def ledger() -> tuple[dict[str, int], dict[str, float]]:
    """The ledger: runs per business key, and the first run's start time per key."""
    import redis

    url, _, key = os.environ["STORY_LEDGER"].partition("#")
    r = redis.Redis.from_url(url)
    try:
        runs = {k.decode(): int(v) for k, v in r.hgetall(f"{key}:runs").items()}
        first = {k.decode(): float(v.split()[0]) for k, v in r.hgetall(f"{key}:first").items()}
    finally:
        r.close()
    return runs, first


def dead_keys() -> dict[str, str]:
    """Business keys of the dead-lettered tasks, with their last error."""
    prefix = {"demo_app.index_document": "index", "demo_app.charge_card": "charge"}
    prefix["demo_app.send_welcome"] = "welcome"
    out: dict[str, str] = {}
    for q in ("indexing", "payments", "emails"):
        for d in app.dead_letters(q, limit=10_000):
            if d.task not in prefix or not d.args:
                continue
            arg = d.args[0]
            uid = arg["id"] if isinstance(arg, dict) else arg
            out[f"{prefix[d.task]}:{uid}"] = d.error.splitlines()[0][:160] if d.error else ""
    return out


def main(config_path: str, result_path: str) -> int:
    cfg = json.loads(pathlib.Path(config_path).read_text())
    start_at = float(cfg["start_at"])
    load_end = start_at + sum(p[0] for p in cfg["phases"])
    placement = app.placement(cfg.get("topology"))
    queues_of = {p: tuple(qs) for p, qs in placement.queues.items() if qs}

    sent: dict[int, float] = {}
    page_rows: list[dict[str, Any]] = []
    search_rows: list[dict[str, Any]] = []
    polled: list[dict[str, Any]] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll, args=(queues_of, stop, polled), daemon=True)
    poller.start()

    async def web() -> None:
        """The web front's async side: the search box and the account pages."""
        await asyncio.sleep(max(0.0, start_at - time.time()))
        jobs = [searches(cfg["phases"], start_at, cfg["search_timeout"], search_rows)]
        if cfg.get("page_rate"):
            jobs.append(pages(cfg["page_rate"], cfg["page_timeout"], load_end, page_rows))
        await asyncio.gather(*jobs)

    web_thread = threading.Thread(target=lambda: asyncio.run(web()), daemon=True)
    time.sleep(max(0.0, start_at - time.time() - 0.2))
    web_thread.start()
    send_signups(cfg["phases"], start_at, sent)
    web_thread.join()
    print(f"[story] load done: {len(sent)} signups, {len(search_rows)} searches", flush=True)

    # Drain: wait until every sent task ran or was dead-lettered (or nothing is left).
    expected = [f"{k}:{uid}" for uid in sent for k in ("index", "charge", "welcome")]
    deadline = time.time() + cfg["drain_timeout"]
    runs: dict[str, int] = {}
    first: dict[str, float] = {}
    dead: dict[str, str] = {}
    while True:
        left = unfinished()
        if os.environ.get("STORY_LEDGER"):
            runs, first = ledger()
            dead = dead_keys()
            missing = sum(1 for k in expected if k not in runs and k not in dead)
        else:
            missing = left
        if (missing == 0 and left == 0) or time.time() > deadline:
            break
        time.sleep(0.5)
    drained_at = time.time()
    time.sleep(1.0)  # a last poll of the idle queues
    stop.set()
    poller.join()

    result = {
        "start_at": start_at,
        "load_end": load_end,
        "drained_at": drained_at,
        "sent": {str(k): v for k, v in sent.items()},
        "expected": len(expected),
        "runs": runs,
        "first": first,
        "dead": dead,
        "unfinished": unfinished(),
        "pages": page_rows,
        "searches": search_rows,
        "polled": polled,
        "queues_of": {p: list(qs) for p, qs in queues_of.items()},
        "pool_of_queue": {q: p for p, qs in queues_of.items() for q in qs},
        "shop": story_shop.__name__,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
