"""Crash tests on every broker: workers killed with SIGKILL every two seconds lose
nothing, and a task far longer than its lease, heartbeating, never runs twice.

Effects go to an append-only sink file outside the broker; the checks are made there.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

N_TASKS = int(os.environ.get("OFFLOAD_CRASH_TASKS", "20000"))


def test_kill_9_every_two_seconds_loses_nothing(harness):
    h = harness(PROC_LEASE="1.0")
    keys = [f"k{i}" for i in range(N_TASKS)]
    for i in range(0, N_TASKS, 1000):
        h.mod.crash.send_many([((k,), {}) for k in keys[i : i + 1000]])
    workers = [h.worker("-c", "16") for _ in range(3)]
    killed: set[int] = set()
    rng = random.Random(7)
    deadline = time.monotonic() + 200
    done = False
    while time.monotonic() < deadline:
        time.sleep(2.0)
        ends = {e[1] for e in h.events() if e[0] == "end"}
        if len(ends) >= N_TASKS:
            done = True
            break
        victim = workers.pop(rng.randrange(len(workers)))
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed.add(victim.pid)
        workers.append(h.worker("-c", "16"))
    assert done, f"only {len(ends)} of {N_TASKS} tasks finished"
    for w in workers:
        w.send_signal(signal.SIGTERM)
        assert w.wait(30) == 0
    assert killed, "no worker was killed: the run was too short to test anything"

    starts: dict[str, list[tuple[int, float]]] = {}
    ends_by: dict[str, list[int]] = {}
    for ev, key, pid, t, _attempt in h.events():
        (starts if ev == "start" else ends_by).setdefault(key, []).append(
            (pid, t) if ev == "start" else pid
        )
    assert set(ends_by) == set(keys)  # none lost
    twice = {k: v for k, v in starts.items() if len(v) > 1}
    for key, runs in twice.items():
        # every run but the last began in a worker that was then killed
        runs.sort(key=lambda r: r[1])
        assert all(pid in killed for pid, _ in runs[:-1]), (key, runs, killed)
    st = h.app.stats("q")
    assert (st.ready, st.scheduled, st.leased, st.dead) == (0, 0, 0, 0)
    print(f"{len(killed)} kills, {len(twice)} of {N_TASKS} tasks ran twice (in flight at a kill)")


def test_a_task_ten_leases_long_runs_once_across_three_workers(harness):
    h = harness(PROC_LEASE="0.3")
    h.mod.work.send("long", 3.0)
    workers = [h.worker("-c", "2", "--burst") for _ in range(3)]
    for w in workers:
        assert w.wait(60) == 0
    ev = h.events()
    assert [e[1] for e in ev if e[0] == "start"] == ["long"]
    assert [e[1] for e in ev if e[0] == "end"] == ["long"]
