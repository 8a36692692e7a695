"""The same shop as a monolith and split in two pools of worker processes gives the same
results, and a split worker never runs another pool's service. Real processes, real
brokers, real signals."""

from __future__ import annotations

import signal

import pytest

from .conftest import APP, TOPOLOGY, Shop

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

ORDERS = range(1, 31)
DEAD = {13, 26}  # build_index refuses these for good (Fail)
FLAKY = {7, 14, 21, 28}  # these fail once, then succeed on the retry


def scenario(shop: Shop) -> None:
    shop.mod.place_order.send_many([((n,), {}) for n in ORDERS])
    want_index = len(ORDERS) - len(DEAD)
    shop.wait_for(
        lambda: (
            sum(e[0] == "index" for e in shop.events()) == want_index
            and shop.app.stats("indexing").dead == len(DEAD)
        ),
        what="every order placed and indexed",
    )


def results(shop: Shop) -> dict:
    """What the run left behind, without the pids: must not depend on the layout."""
    events = sorted((ev, key, attempt, queue) for ev, key, attempt, _pid, queue in shop.events())
    dead = sorted(
        (d.task, tuple(d.args or ()), d.error, d.attempts)
        for d in shop.app.dead_letters("indexing")
    )
    counts = {
        q: (s.ready, s.scheduled, s.leased, s.dead)
        for q in ("orders", "indexing")
        for s in [shop.app.stats(q)]
    }
    return {"events": events, "dead": dead, "counts": counts}


def stop(*procs) -> None:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        assert p.wait(30) == 0


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_monolith_and_split_give_identical_results(shop, kind):
    mono = shop(kind)
    one = mono.start("run", APP, "-c", "4", "--grace", "5")
    scenario(mono)
    stop(one)
    monolith = results(mono)

    split = shop(kind)
    web = split.start("worker", APP, "--pool", "web", "--topology", TOPOLOGY, "--grace", "5")
    high = split.start("worker", APP, "--pool", "highmem", "--topology", TOPOLOGY, "--grace", "5")
    scenario(split)
    stop(web, high)
    assert results(split) == monolith

    # the expected outcome, stated once
    assert monolith["dead"] == [
        ("build_index", (n,), f"Fail: document {n} is unreadable", 1) for n in sorted(DEAD)
    ]
    want = {("order", n, 1, "orders") for n in ORDERS} | {
        ("index", n, 2 if n in FLAKY else 1, "indexing") for n in ORDERS if n not in DEAD
    }
    assert set(monolith["events"]) == want and len(monolith["events"]) == len(want)
    assert monolith["counts"] == {"orders": (0, 0, 0, 0), "indexing": (0, 0, 0, len(DEAD))}

    # the monolith ran both services in one process; the split never crossed pools
    assert {pid for *_, pid, _q in mono.events()} == {one.pid}
    ran = {(ev, pid) for ev, _key, _attempt, pid, _queue in split.events()}
    assert ran == {("order", web.pid), ("index", high.pid)}
    assert "queues: indexing, concurrency 2" in "\n".join(split.output[high.pid])


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_split_with_the_process_executor_gives_the_same_results(shop, kind, monkeypatch):
    """The indexer as a process-executor service: its tasks run in the highmem worker's
    child processes, and what the run leaves behind is what the thread layout left."""
    monkeypatch.setenv("SPLIT_EXECUTOR", "process")
    split = shop(kind)
    web = split.start("worker", APP, "--pool", "web", "--topology", TOPOLOGY, "--grace", "5")
    high = split.start("worker", APP, "--pool", "highmem", "--topology", TOPOLOGY, "--grace", "5")
    scenario(split)
    stop(web, high)
    got = results(split)
    assert got["dead"] == [
        ("build_index", (n,), f"Fail: document {n} is unreadable", 1) for n in sorted(DEAD)
    ]
    want = {("order", n, 1, "orders") for n in ORDERS} | {
        ("index", n, 2 if n in FLAKY else 1, "indexing") for n in ORDERS if n not in DEAD
    }
    assert set(got["events"]) == want and len(got["events"]) == len(want)
    assert got["counts"] == {"orders": (0, 0, 0, 0), "indexing": (0, 0, 0, len(DEAD))}
    orders = {pid for ev, _k, _a, pid, _q in split.events() if ev == "order"}
    index = {pid for ev, _k, _a, pid, _q in split.events() if ev == "index"}
    assert orders == {web.pid}
    assert index and not index & {web.pid, high.pid}  # the highmem worker's children
    assert len(index) <= 2  # concurrency 2: at most two children, reused
