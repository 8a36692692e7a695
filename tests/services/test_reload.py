"""Rolling deploys: ``offload run`` on SIGHUP starts workers of the code on disk, waits
until they are up, then drains the old ones. Under load nothing is lost or failed; a deploy
whose workers cannot start leaves the old ones running."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest

from . import scaling
from .scaling import APP

scale_run = scaling.scale_run  # the fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TASKS = 20_000
RELOADS = 5
NEWER = 50  # tasks of a function only the new code has, sent before its deploy
TOPOLOGY = (
    '[pools.web]\nservices = ["default"]\nmachine = "e2-standard-2"\n'
    "replicas = [2, 2]\nconcurrency = 8\n"
)


def up_pids(r: scaling.Run) -> list[int]:
    return [int(m.group(1)) for _, m in r.log(r"^\[web\.\d\] .* worker pid (\d+) ")]


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_reloads_under_load_lose_nothing(scale_run, kind, tmp_path):
    """20,000 tasks while 5 reloads happen: 0 lost, 0 failed. Before the first reload the
    sender (the new code) also sends tasks of a function the running workers lack: they
    wait, uncounted, for the workers of the deploy that has it, and none is dead-lettered."""
    r = scale_run(kind)
    marker = tmp_path / "newer-deployed"
    r.env["SCALE_NEWER"] = str(marker)  # absent: the running code lacks `newer`
    sup = r.start("run", APP, "--topology", r.topology(TOPOLOGY), "--grace", "10")
    r.wait_for(lambda: len(up_pids(r)) == 2, 20, "two workers up")

    @r.app.task(queue="work", name="newer")
    def newer(n: int) -> None: ...  # the sender's side of the newer code

    newer.send_many([((n,), {}) for n in range(NEWER)])

    def send() -> None:  # 20,000 tasks of 1 ms over ~5 s, while the reloads happen
        for start in range(0, TASKS, 400):
            r.mod.step.send_many([((n, 0.001), {}) for n in range(start, start + 400)])
            time.sleep(0.1)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.5)
    marker.touch()  # the new code is on disk: the next workers have `newer`
    for i in range(RELOADS):
        sup.send_signal(signal.SIGHUP)
        r.wait_for(lambda i=i: len(r.log(r"reload done")) == i + 1, 30, f"reload {i + 1} done")
    sender.join(60)
    want = list(range(TASKS)) + [r.mod.NEWER_BASE + n for n in range(NEWER)]
    r.wait_for(lambda: len(r.ran()) == len(want), 60, "every task ran")

    assert sorted(r.ran()) == want, "a task was lost"
    assert r.app.dead_letters("work") == []
    st = r.app.stats("work")
    assert (st.ready, st.leased, st.dead) == (0, 0, 0)

    steps = [line.split(":")[0] for _, line in r.lines if line.startswith("[offload] reload")]
    # each reload starts new workers, sees them up, and only then drains the old ones
    assert [x for x in steps if x != "[offload] reload done"] == [
        "[offload] reload (SIGHUP)",
        "[offload] reload",
    ] * RELOADS, steps
    drained = r.log(r"^\[offload\] web\.\d+ drained and stopped")
    assert len(drained) == 2 * RELOADS  # 2 old workers x each reload
    pids = up_pids(r)
    assert len(pids) == 2 * (RELOADS + 1)  # every generation of two
    ran_by = {pid for pid, _ in r.ran().values()}
    assert set(pids[-2:]) & ran_by, "the newest workers ran nothing"
    newer_by = {r.ran()[r.mod.NEWER_BASE + n][0] for n in range(NEWER)}
    assert not newer_by & set(pids[:2]), "a worker without `newer` ran it"
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    [m] = [m for m in r.app.metrics() if m.task == "step"]  # flushed by now
    assert m.failures == 0 and m.count >= TASKS


def test_a_reload_whose_workers_cannot_start_keeps_the_old_ones(scale_run, tmp_path):
    r = scale_run("redis")
    broken = tmp_path / "broken"
    r.env["SCALE_BROKEN"] = str(broken)
    sup = r.start("run", APP, "--topology", r.topology(TOPOLOGY), "--grace", "5")
    r.wait_for(lambda: len(up_pids(r)) == 2, 20, "two workers up")
    broken.write_text("")  # the code on disk no longer imports
    sup.send_signal(signal.SIGHUP)
    r.wait_for(lambda: r.log(r"reload failed"), 20, "the reload gave up")
    [(_, m)] = r.log(r"reload failed: (.*)")
    assert re.match(r"web\.\d exited with status 1 before it was up; the old workers keep", m[1])
    assert not r.log("drained and stopped")
    broken.unlink()
    r.mod.step.send_many([((n,), {}) for n in range(20)])
    r.wait_for(lambda: len(r.ran()) == 20, 20, "the old workers still run tasks")
    assert {pid for pid, _ in r.ran().values()} <= set(up_pids(r)[:2])
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
