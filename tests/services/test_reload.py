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

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TASKS = 2000
TOPOLOGY = (
    '[pools.web]\nservices = ["default"]\nmachine = "e2-standard-2"\n'
    "replicas = [2, 2]\nconcurrency = 8\n"
)


def up_pids(r: scaling.Run) -> list[int]:
    return [int(m.group(1)) for _, m in r.log(r"^\[web\.\d\] .* worker pid (\d+) ")]


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_two_reloads_under_load_lose_nothing(scale_run, kind):
    r = scale_run(kind)
    sup = r.start("run", APP, "--topology", r.topology(TOPOLOGY), "--grace", "10")
    r.wait_for(lambda: len(up_pids(r)) == 2, 20, "two workers up")

    def send() -> None:  # ~2,000 tasks of 10 ms over ~4 s, while the reloads happen
        for start in range(0, TASKS, 50):
            r.mod.step.send_many([((n, 0.01), {}) for n in range(start, start + 50)])
            time.sleep(0.1)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(1.0)
    sup.send_signal(signal.SIGHUP)
    r.wait_for(lambda: r.log(r"reload: new worker\(s\) up"), 20, "the first reload's workers")
    time.sleep(0.5)
    sup.send_signal(signal.SIGHUP)
    r.wait_for(lambda: len(r.log(r"reload done")) == 2, 30, "both reloads done")
    sender.join(30)
    r.wait_for(lambda: len(r.ran()) == TASKS, 30, "every task ran")

    assert sorted(r.ran()) == list(range(TASKS)), "a task was lost"
    assert r.app.dead_letters("work") == []
    st = r.app.stats("work")
    assert (st.ready, st.leased, st.dead) == (0, 0, 0)

    steps = [line.split(":")[0] for _, line in r.lines if line.startswith("[offload] reload")]
    # each reload starts new workers, sees them up, and only then drains the old ones
    assert [x for x in steps if x != "[offload] reload done"] == [
        "[offload] reload (SIGHUP)",
        "[offload] reload",
        "[offload] reload (SIGHUP)",
        "[offload] reload",
    ], steps
    assert len(r.log(r"^\[offload\] web\.\d drained and stopped")) == 4  # 2 old x 2 reloads
    pids = up_pids(r)
    assert len(pids) == 6  # three generations of two
    ran_by = {pid for pid, _ in r.ran().values()}
    assert set(pids[4:]) & ran_by, "the newest workers ran nothing"
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
