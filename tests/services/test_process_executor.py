"""The process executor: tasks of executor="process" services run in reused child
processes; a child over its memory limit is killed and its task fails with
MemoryLimitExceeded (or moves to its on_oom queue); a child that crashes costs its task,
never the worker. Real children, real brokers, real signals."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import threading
import time

import pytest

from offload import Hooks, Worker
from offload.worker.processes import ChildPool
from tests.conftest import _drop_pg_schema, _drop_redis_prefix, make_url

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024


@pytest.fixture
def memapp(tmp_path, request):
    """tests.services.memapp on a fresh namespace of the parametrised broker (sqlite if
    the test is not parametrised)."""
    kind = getattr(request, "param", "sqlite")
    url = make_url(kind, tmp_path)
    saved = os.environ.get("OFFLOAD_BROKER")
    os.environ["OFFLOAD_BROKER"] = url
    try:
        import tests.services.memapp as mod

        mod = importlib.reload(mod)
    finally:
        if saved is None:
            os.environ.pop("OFFLOAD_BROKER", None)
        else:
            os.environ["OFFLOAD_BROKER"] = saved
    yield mod
    mod.app.close()
    if kind == "postgres":
        _drop_pg_schema(url)
    elif kind == "redis":
        _drop_redis_prefix(url)


def burst(app, hooks=None, **kw) -> object:
    return asyncio.run(Worker(app, burst=True, hooks=hooks, **kw).run())


class Seen(Hooks):
    def __init__(self) -> None:
        self.deaths: list[tuple[float, str]] = []
        self.retries: list[tuple[float, str]] = []

    def dead(self, claim, error):
        self.deaths.append((time.time(), error))

    def retried(self, claim, delay, error):
        self.retries.append((time.time(), error))


@pytest.mark.parametrize("memapp", ["sqlite", "redis", "postgres"], indirect=True)
def test_tasks_run_in_reused_children_and_return_through_calls(memapp):
    m = memapp
    handles = [m.echo.send_with(args=(i,), result_ttl=60) for i in range(6)]
    handles.append(m.async_echo.send_with(args=(21,), result_ttl=60))
    stats = burst(m.app, concurrency=2)
    assert stats.succeeded == 7 and stats.dead == 0
    got = [h.result(timeout=5) for h in handles[:-1]]
    assert [g["x"] for g in got] == list(range(6))
    pids = {g["pid"] for g in got}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # two children, reused
    assert all(g["attempt"] == 1 for g in got)
    assert handles[-1].result(timeout=5) == 42


def test_a_context_variable_one_task_sets_in_a_child_is_not_the_next_ones(memapp):
    m = memapp
    handles = [m.tenant_seen.send_with(args=(i,), result_ttl=60) for i in range(5)]
    stats = burst(m.app, concurrency=1)  # one child runs them all, one after another
    assert stats.succeeded == 5
    assert [h.result(timeout=5) for h in handles] == [""] * 5


@pytest.mark.parametrize("memapp", ["sqlite", "redis", "postgres"], indirect=True)
def test_a_task_over_its_memory_limit_is_killed_and_moved_to_its_on_oom_queue(memapp):
    m = memapp
    m.hog.send(360)  # three times the small service's 120 MiB
    m.hog_no_escalation.send(360)
    m.echo.send(1)
    seen = Seen()
    stats = burst(m.app, hooks=seen, concurrency=3)
    # hog: killed on "work", moved to "work-big" (1 GiB), where it succeeded
    assert stats.succeeded == 2
    assert any("moved to 'work-big'" in e and "MemoryLimitExceeded" in e for _, e in seen.retries)
    assert m.app.stats("work").dead == m.app.stats("work-big").dead == 0
    # hog_no_escalation: killed on each attempt, dead-lettered with the reason
    (d,) = m.app.dead_letters("limited")
    assert d.error.startswith("MemoryLimitExceeded: ") and "memory limit of 120MiB" in d.error
    assert "peak seen" in d.error and d.attempts == 3


def test_the_escalated_run_counts_the_attempt_it_had(memapp):
    m = memapp
    h = m.hog_attempt.send_with(args=(360,), result_ttl=60)
    stats = burst(m.app, concurrency=2)
    assert stats.succeeded == 1
    # the copy on the bigger queue is attempt 2 (its first try was killed for memory)
    assert m.app.stats("work-big").dead == 0
    assert h.result(timeout=5) == 2


def test_a_memory_kill_lands_within_250ms_of_crossing_the_limit(memapp, tmp_path):
    m = memapp
    trace = tmp_path / "trace"
    m.hog_slowly.send(str(trace), 3 * 120)
    seen = Seen()
    burst(m.app, hooks=seen, concurrency=1)
    (died_at, error) = seen.deaths[0] if seen.deaths else seen.retries[0]
    assert "MemoryLimitExceeded" in error
    # the hog writes (time, RSS) after each 4 MiB step: the limit was crossed at the
    # first line above it, or, killed before it could write that line, after its last
    # line: then died_at - last is an upper bound of the latency, as strict a test
    samples = [line.split() for line in trace.read_text().split("\n") if line]
    assert samples, "the hog never ran"
    above = [float(t) for t, rss in samples if int(rss) > 120 * MiB]
    crossed = above[0] if above else float(samples[-1][0])
    assert died_at - crossed < 0.25, died_at - crossed


@pytest.mark.parametrize("how", ["exit", "segv", "kill"])
def test_a_child_that_dies_fails_its_task_with_the_reason_and_the_worker_goes_on(memapp, how):
    m = memapp
    m.crash.send(how)
    for i in range(3):
        m.echo.send(i)
    stats = burst(m.app, concurrency=2)
    assert stats.succeeded == 3 and stats.dead == 1
    (d,) = m.app.dead_letters("plain")
    assert d.error.startswith("ProcessDied: ") and d.attempts == 3
    want = {
        "exit": "exited with status 3",
        "segv": "SIGSEGV (a segmentation fault",
        "kill": "SIGKILL (killed from outside",
    }[how]
    assert want in d.error, d.error


def test_a_child_killed_from_outside_mid_task(memapp, tmp_path):
    m = memapp
    pidfile = tmp_path / "pid"
    m.report_pid_and_sleep.send(str(pidfile), 30)
    m.echo.send(1)
    w = Worker(m.app, burst=True, concurrency=2)

    def killer() -> None:
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text():
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer)
    t.start()
    stats = asyncio.run(w.run())
    t.join()
    assert stats.succeeded == 1
    (d,) = m.app.dead_letters("once")
    assert "SIGKILL" in d.error and "killed from outside" in d.error


def test_exceptions_keep_their_type_message_and_the_verdict_rules(memapp):
    m = memapp
    h_value = m.crash.send_with(args=("value",), result_ttl=60)
    h_fail = m.crash.send_with(args=("fail",), result_ttl=60)
    m.crash.send("retry")
    stats = burst(m.app, concurrency=2)
    assert stats.dead == 3
    by_error = sorted(d.error for d in m.app.dead_letters("plain"))
    assert by_error[0].startswith("Fail: refused for good")
    assert by_error[1].startswith("Retry: not yet (retry policy exhausted after 3 attempts)")
    # a lone surrogate and a NUL in the message: stored escaped, not a dead child
    assert by_error[2].startswith("ValueError: bad value \\udcff\\x00")
    with pytest.raises(Exception) as err:
        h_value.result(timeout=5)
    assert type(err.value).__name__ == "RemoteError"
    assert err.value.type == "ValueError" and "bad value" in err.value.message
    assert "crash" in err.value.traceback
    with pytest.raises(Exception, match="refused for good"):
        h_fail.result(timeout=5)


def test_a_value_the_child_cannot_send_back_fails_the_call_with_its_reason(memapp):
    m = memapp
    h = m.unsendable.send_with(result_ttl=60)
    assert burst(m.app, concurrency=1).succeeded == 1  # the task itself succeeded
    with pytest.raises(Exception) as err:
        h.result(timeout=5)
    assert type(err.value).__name__ == "RemoteError"
    assert err.value.type == "offload.errors.PayloadError"
    assert "cannot travel back" in err.value.message and "object" in err.value.message


def test_a_timeout_kills_the_child(memapp, tmp_path):
    m = memapp
    pidfile = tmp_path / "pid"
    m.report_pid_and_sleep_briefly.send(str(pidfile), 30)
    t0 = time.monotonic()
    stats = burst(m.app, concurrency=1)
    assert time.monotonic() - t0 < 15
    assert stats.dead == 1
    (d,) = m.app.dead_letters("timed")
    assert d.error.startswith("TaskTimeout: ")
    pid = int(pidfile.read_text())
    assert not _alive(pid), "the timed-out child still runs"


def test_a_deadline_that_passes_kills_the_child(memapp, tmp_path):
    """A call's deadline is the task's: past it, the caller gets DeadlineExceeded and the
    child running the task is killed (not left to finish work nobody waits for)."""
    from offload import DeadlineExceeded

    m = memapp
    pidfile = tmp_path / "pid"
    w = Worker(m.app, concurrency=1, queues=["once"])
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=lambda: loop.run_until_complete(w.run()))
    t.start()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            m.report_pid_and_sleep.call_with(args=(str(pidfile), 30), timeout=1.5)
        assert time.monotonic() - started < 3
        pid = int(pidfile.read_text())
        assert not _alive(pid), "the child still runs past the deadline"
        # The worker judges the killed run when it sees the child gone: a stop before that
        # releases the run instead (a hurried drain's rule), so wait for the verdict first.
        wait_until = time.monotonic() + 10
        while not m.app.dead_letters("once") and time.monotonic() < wait_until:
            time.sleep(0.02)
    finally:
        w.stop(hurry=True)
        t.join(30)
        loop.close()
    (d,) = m.app.dead_letters("once")  # retry limit 0: the run that timed out is its last
    assert "DeadlineExceeded" in d.error and "deadline" in d.error


def test_a_drain_out_of_grace_kills_the_child_and_releases_the_task(memapp, tmp_path):
    m = memapp
    pidfile = tmp_path / "pid"
    m.report_pid_and_sleep.send(str(pidfile), 30)
    w = Worker(m.app, concurrency=1, grace=0.2)

    def stopper() -> None:
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text():
                w.stop()
                return
            time.sleep(0.05)

    t = threading.Thread(target=stopper)
    t.start()
    stats = asyncio.run(w.run())
    t.join()
    assert stats.released == 1
    assert m.app.stats("once").ready == 1  # back for another worker, not lost
    assert not _alive(int(pidfile.read_text()))


def test_measured_peak_rss_of_a_200mib_task_is_within_10_percent():
    async def go() -> list:
        pool = ChildPool(1, ["tests.services.memapp"])
        child = await pool.acquire()
        try:
            from offload.core import envelope as env

            payload = env.encode(env.Envelope(id="x", task="t", queue="work-big", args=[200]))
            module, name = "tests.services.memapp", "_unused_big_alloc"
            request = [module, name, "x", "q", None, 1, payload, False]
            return await child.send(request)
        finally:
            child.close()

    reply = asyncio.run(go())
    assert reply[0] == "ok", reply
    peak = reply[-1]
    assert abs(peak - 200 * MiB) <= 0.10 * 200 * MiB, peak / MiB


@pytest.mark.slow
def test_a_storm_of_hogs_among_normal_tasks_costs_no_normal_task(memapp):
    m = memapp
    """200 hogs mixed with 5,000 normal tasks: no worker death, no normal task lost or
    failed, every hog dead-lettered with its reason."""
    m.app.queue("limited", retry=m.Retry(limit=0))
    for start in range(0, 5000, 25):  # mixed: 25 normal tasks, then a hog
        m.echo.send_many([((i,), {}) for i in range(start, start + 25)])
        m.hog_no_escalation.send(360)
    stats = burst(m.app, concurrency=4)
    assert stats.succeeded == 5000
    assert m.app.stats("plain").dead == 0 and m.app.stats("plain").ready == 0
    dead = m.app.dead_letters("limited", limit=1000)
    assert len(dead) == 200 and all(d.error.startswith("MemoryLimitExceeded") for d in dead)


def _alive(pid: int) -> bool:
    for _ in range(100):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return False
        except OSError:
            return False
        time.sleep(0.02)
    return True
