"""``offload run APP --topology FILE``: one worker process per pool, logs prefixed with the
pool, a crashed worker started again, all drained on SIGTERM. Real processes and signals."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from .conftest import APP, TOPOLOGY, Shop

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def worker_pid(shop: Shop, sup, label: str, not_pid: int | None = None) -> int:
    """The pid the worker of ``label`` (e.g. ``web.1``) logged when it started."""
    found: list[int] = []

    def seen() -> bool:
        for line in list(shop.output[sup.pid]):
            m = re.match(rf"\[{re.escape(label)}\] .* worker pid (\d+) ", line)
            if m and int(m.group(1)) != not_pid:
                found.append(int(m.group(1)))
                return True
        return False

    shop.wait_for(seen, 30, f"worker {label} started")
    return found[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def indexed(shop: Shop, keys) -> bool:
    return {k for ev, k, *_ in shop.events() if ev == "index"} >= set(keys)


def test_run_starts_one_worker_per_pool_restarts_a_crash_and_drains(shop):
    s = shop("redis")
    sup = s.start("run", APP, "--topology", TOPOLOGY, "--grace", "5")
    web, high = worker_pid(s, sup, "web.1"), worker_pid(s, sup, "highmem.1")
    assert len({sup.pid, web, high}) == 3

    s.mod.place_order.send_many([((n,), {}) for n in range(1, 6)])
    s.wait_for(lambda: indexed(s, range(1, 6)), what="orders 1-5 indexed")
    ran = {(ev, pid) for ev, _k, _a, pid, _q in s.events()}
    assert ran == {("order", web), ("index", high)}  # each pool ran only its own service

    # acked first: a kill loses a batch of acks not yet sent, and those tasks would then
    # stay leased until their lease ends (at-least-once), past this test's end
    s.wait_for(lambda: s.app.stats("indexing").leased == 0, what="orders 1-5 acked")
    os.kill(high, signal.SIGKILL)  # the high-memory worker dies
    s.wait_for(
        lambda: any("[offload] highmem.1 exited with status -9" in x for x in s.output[sup.pid]),
        what="the supervisor saw the crash",
    )
    high2 = worker_pid(s, sup, "highmem.1", not_pid=high)
    assert alive(web)  # the other pool's worker was left alone
    s.mod.place_order.send_many([((n,), {}) for n in range(6, 11)])
    s.wait_for(lambda: indexed(s, range(6, 11)), what="orders 6-10 indexed after the restart")
    assert {pid for ev, k, _a, pid, _q in s.events() if ev == "index" and k >= 6} == {high2}

    t0 = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0, s.output[sup.pid][-20:]
    assert time.monotonic() - t0 < 15
    out = s.output[sup.pid]
    assert "[offload] every worker stopped" in out[-1] or any(
        "[offload] every worker stopped" in x for x in out
    )
    for label in ("web.1", "highmem.1"):  # each drained and said so, prefixed by its pool
        assert any(x.startswith(f"[{label}] ") and "stopped after" in x for x in out), label
    assert all(x.startswith("[") for x in out if x.strip()), out
    time.sleep(0.2)
    assert not alive(web) and not alive(high2)
    st = s.app.stats("indexing")
    assert (st.ready, st.leased) == (0, 0)


def test_run_without_a_topology_is_the_monolith_in_one_process(shop):
    s = shop("redis")
    p = s.start("run", APP, "-c", "4")
    s.mod.place_order.send_many([((n,), {}) for n in (1, 2)])
    s.wait_for(lambda: indexed(s, (1, 2)), what="indexed")
    assert {pid for *_, pid, _q in s.events()} == {p.pid}
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert not any(x.startswith("[") for x in s.output[p.pid])
