"""The worker's broker helper process (offload.worker.brokerhost): claims and acks made by
a process of its own while a backlog waits. Nothing may be lost or wedged whatever happens
to the helper: killed mid-run, unable to start, left behind by a killed worker, or sent the
Ctrl-C that reaches the whole process group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload import App, ConfigError, Worker
from offload.brokers import broker_from_url
from offload.worker import brokerhost
from offload.worker.brokerhost import HostedBroker, hosted

from ..conftest import make_url

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def _app(url: str, lease: float = 60.0) -> App:
    app = App("helper", broker=url)
    app.queue("q", lease=lease)
    return app


async def _until(cond, timeout: float = 20.0, what: str = "the condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _run(app: App, holder: list[Worker], **settings) -> Worker:
    """A worker with the helper on (``settings``: its others), run until it stops; in
    ``holder`` meanwhile, for the tasks to reach it."""

    async def main() -> Worker:
        w = Worker(app, broker_process="on", **settings)
        holder.append(w)
        await asyncio.wait_for(w.run(), 90)
        return w

    return asyncio.run(main())


def _helper_of(worker: Worker) -> HostedBroker:
    b = worker._broker
    assert isinstance(b, HostedBroker), f"the worker did not wrap its broker: {b!r}"
    return b


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_backlog_is_claimed_and_acked_through_the_helper(kind, tmp_path):
    """Every task runs exactly once here (no failure), and once the helper is up the claims
    and acks are its: the worker's own broker makes none of them."""
    url = make_url(kind, tmp_path)
    app = _app(url)
    seen: list[int] = []
    holder: list[Worker] = []

    @app.task(queue="q", name="t")
    async def t(i: int) -> None:
        if i < 64:  # the first batch waits for the helper: the rest go through it
            await _until(lambda: _helper_of(holder[0]).starts, what="the helper to start")
        seen.append(i)

    t.send_many([((i,), {}) for i in range(3000)])

    try:
        w = _run(app, holder, concurrency=64, burst=True)
        assert w.stats.succeeded == 3000 and w.stats.retried == 0
        hb = _helper_of(w)
        assert hb.hosted_calls > 10, "the helper made (almost) no claims or acks"
        assert hb._proc is None, "close() left the helper running"
        assert sorted(seen) == list(range(3000))
        st = app.stats("q")
        assert (st.ready, st.leased, st.dead) == (0, 0, 0)
    finally:
        app.close()
        if kind == "postgres":
            from ..conftest import _drop_pg_schema

            _drop_pg_schema(url)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_killed_or_hung_helper_loses_nothing(sig, tmp_path, monkeypatch):
    """The helper dies (SIGKILL) or stops answering (SIGSTOP, as a hung process looks)
    mid-backlog. Calls in flight fail over to the worker itself, none as an outage; a
    hung helper is killed after CALL_TIMEOUT rather than holding the worker's claims
    forever; what it had claimed runs after its lease; every task runs."""
    monkeypatch.setattr(HostedBroker, "CALL_TIMEOUT", 0.5)
    app = _app(make_url("sqlite", tmp_path), lease=2.0)
    seen: set[int] = set()
    holder: list[Worker] = []
    hit: list[int] = []
    n = 3000

    @app.task(queue="q", name="t")
    async def t(i: int) -> None:
        hb = _helper_of(holder[0])
        if i == 100:
            await _until(lambda: hb._ready, what="the helper to start")
            hit.append(hb._proc.pid)
            os.kill(hb._proc.pid, sig)
        await asyncio.sleep(0.001)
        seen.add(i)
        if len(seen) == n:
            holder[0].stop()

    t.send_many([((i,), {}) for i in range(n)])

    try:
        w = _run(app, holder, concurrency=64)
        assert w.stats.retried == 0 and w.stats.dead == 0
        assert seen == set(range(n))
        assert hit and not _alive(hit[0]), "the helper was left behind"
        st = app.stats("q")
        assert (st.ready, st.leased, st.dead) == (0, 0, 0)
    finally:
        app.close()
        for pid in hit:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_a_helper_that_cannot_start_leaves_the_worker_claiming_itself(
    tmp_path, monkeypatch, caplog
):
    app = _app(make_url("sqlite", tmp_path))
    seen: list[int] = []

    @app.task(queue="q", name="t")
    async def t(i: int) -> None:
        seen.append(i)

    t.send_many([((i,), {}) for i in range(500)])
    monkeypatch.setattr(brokerhost.sys, "executable", str(tmp_path / "no-such-python"))

    try:
        with caplog.at_level(logging.WARNING, logger="offload.worker"):
            w = _run(app, [], concurrency=16, burst=True)
        assert sorted(seen) == list(range(500))
        assert _helper_of(w).hosted_calls == 0
        assert "could not start the worker's broker helper process" in caplog.text
    finally:
        app.close()


def test_a_helper_whose_broker_cannot_open_is_left_out(tmp_path, monkeypatch, caplog):
    """The helper starts but cannot open its broker (here: a database it cannot
    create): it says why, exits, and the worker claims for itself."""
    real_init = HostedBroker.__init__

    def init(self, broker, url):
        real_init(self, broker, url)
        self._url = f"sqlite:///{tmp_path}/no-such-dir/x.db"

    monkeypatch.setattr(HostedBroker, "__init__", init)
    app = _app(make_url("sqlite", tmp_path))
    seen: list[int] = []
    holder: list[Worker] = []

    @app.task(queue="q", name="t")
    async def t(i: int) -> None:
        if i == 0:  # the backlog lasts until the helper's start has failed
            hb = _helper_of(holder[0])
            await _until(lambda: hb._failures == 1, what="the helper's start to fail")
        seen.append(i)

    t.send_many([((i,), {}) for i in range(500)])

    try:
        with caplog.at_level(logging.WARNING, logger="offload.worker"):
            w = _run(app, holder, concurrency=16, burst=True)
        assert sorted(seen) == list(range(500))
        hb = _helper_of(w)
        assert hb.hosted_calls == 0 and hb._proc is None and not hb._ready
        assert "could not start the worker's broker helper process" in caplog.text
        assert "no-such-dir" in caplog.text  # the helper's own reason reaches the log
    finally:
        app.close()


def test_big_payloads_cross_the_helper_intact(tmp_path):
    """A claim's reply spans many reads of the socket (64 tasks of 100 kB here): every
    payload arrives whole."""
    import hashlib

    app = _app(make_url("sqlite", tmp_path))
    holder: list[Worker] = []
    bad: list[int] = []
    seen: list[int] = []

    @app.task(queue="q", name="t")
    async def t(i: int, blob: bytes, digest: str) -> None:
        if i < 64:
            await _until(lambda: _helper_of(holder[0]).starts, what="the helper to start")
        if hashlib.sha256(blob).hexdigest() != digest:
            bad.append(i)
        seen.append(i)

    blobs = [os.urandom(100_000) for _ in range(8)]
    calls = []
    for i in range(400):
        b = blobs[i % 8]
        calls.append(((i, b, hashlib.sha256(b).hexdigest()), {}))
    t.send_many(calls)

    try:
        w = _run(app, holder, concurrency=64, burst=True)
        assert _helper_of(w).hosted_calls > 0
        assert not bad and sorted(seen) == list(range(400))
    finally:
        app.close()


def test_a_reply_the_worker_cannot_read_turns_the_helper_off(tmp_path, monkeypatch, caplog):
    """Were a reply unreadable (a bug), it would be so every time: the helper is turned
    off for good rather than restarted, and what its claim had leased runs after the
    lease expires."""
    import msgspec

    monkeypatch.setattr(brokerhost, "_claimed", msgspec.msgpack.Decoder(list[int]))
    app = _app(make_url("sqlite", tmp_path), lease=1.0)
    seen: set[int] = set()
    holder: list[Worker] = []
    n = 600

    @app.task(queue="q", name="t")
    async def t(i: int) -> None:
        if i < 64:
            await _until(lambda: _helper_of(holder[0]).starts, what="the helper to start")
        seen.add(i)
        if len(seen) == n:
            holder[0].stop()

    t.send_many([((i,), {}) for i in range(n)])

    try:
        with caplog.at_level(logging.ERROR, logger="offload.worker"):
            w = _run(app, holder, concurrency=64)
        assert seen == set(range(n))
        hb = _helper_of(w)
        assert hb._spawn_after == float("inf") and not hb._ready
        assert "sent a reply the worker cannot read" in caplog.text
    finally:
        app.close()


def test_an_idle_worker_stops_its_helper(tmp_path, monkeypatch):
    """The helper is for a backlog: once claims stop coming back full, the worker is one
    process again, and a new backlog starts a new helper."""
    monkeypatch.setattr(HostedBroker, "IDLE_AFTER", 0.3)
    started: list[subprocess.Popen] = []  # every helper, as it answers
    real_start = HostedBroker._start

    async def start(self: HostedBroker) -> None:
        await real_start(self)
        started.append(self._proc)

    monkeypatch.setattr(HostedBroker, "_start", start)
    app = _app(make_url("sqlite", tmp_path))
    seen: list[int] = []
    holder: list[Worker] = []

    @app.task(queue="q", name="t")
    async def t(i: int) -> None:
        if i == 0:
            await _until(lambda: _helper_of(holder[0]).starts, what="the helper to start")
        seen.append(i)

    t.send_many([((i,), {}) for i in range(200)])

    async def main() -> None:
        w = Worker(app, concurrency=16, broker_process="on")
        holder.append(w)
        run = asyncio.ensure_future(w.run())
        await _until(lambda: len(seen) == 200, what="the backlog to run")
        hb = _helper_of(w)
        await _until(lambda: hb._proc is None and not hb._ready, what="the helper to stop")
        assert len(started) == 1
        await _until(lambda: started[0].poll() is not None, what="the stopped helper to exit")
        t.send_many([((i,), {}) for i in range(200, 400)])  # a second backlog
        await _until(lambda: len(started) == 2, what="a second helper")
        await _until(lambda: len(seen) == 400, what="the second backlog to run")
        w.stop()
        await asyncio.wait_for(run, 30)

    try:
        asyncio.run(main())
        assert sorted(seen) == list(range(400))
    finally:
        app.close()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            out += [int(x) for x in f.read().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _cli_worker(url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """``offload worker`` on a backlog of slow async tasks, in a process group of its own
    (as a shell runs it), with the helper on."""
    mod = tmp_path / "helperapp.py"
    mod.write_text(
        "import asyncio\nfrom offload import App\n"
        f"app = App('helper', broker={url!r})\napp.queue('q')\n"
        "@app.task(queue='q', name='slow')\n"
        "async def slow(i: int) -> None:\n    await asyncio.sleep(0.05)\n"
    )
    sender = App("helper", broker=url)
    sender.queue("q")
    slow = sender.task(queue="q", name="slow")(lambda i: None)
    slow.send_many([((i,), {}) for i in range(20000)])
    sender.close()
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT / 'src'}")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "offload",
            "worker",
            "helperapp:app",
            "-c",
            "64",
            "--broker-process",
            "on",
        ],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_helper(proc: subprocess.Popen[bytes]) -> int:
    end = time.monotonic() + 30
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        kids = [k for k in _children(proc.pid) if _alive(k)]
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("the worker started no helper process")


def test_the_helper_exits_with_a_killed_worker(tmp_path):
    proc = _cli_worker(make_url("sqlite", tmp_path), tmp_path)
    try:
        helper = _wait_helper(proc)
        proc.kill()
        proc.wait(10)
        end = time.monotonic() + 10
        while _alive(helper) and time.monotonic() < end:
            time.sleep(0.05)
        assert not _alive(helper), "the helper outlived its worker"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_drains_through_the_helper(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: the helper
    ignores it, the worker drains and acks what it ran through it, then both exit."""
    url = make_url("sqlite", tmp_path)
    proc = _cli_worker(url, tmp_path)
    try:
        helper = _wait_helper(proc)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert not _alive(helper)
        assert "not recorded" not in err.decode()
        b = broker_from_url(url)

        async def leased() -> int:
            await b.open()
            try:
                return (await b.stats("q")).leased
            finally:
                await b.close()

        assert asyncio.run(leased()) == 0, "a drained worker left tasks leased"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_when_the_worker_uses_a_helper(tmp_path, monkeypatch):
    url = make_url("sqlite", tmp_path)
    app = App("modes", broker=url)
    app.queue("a")
    app.queue("s")

    @app.task(queue="a", name="a")
    async def a() -> None: ...

    @app.task(queue="s", name="s")
    def s() -> None: ...

    b = broker_from_url(url)
    core = app.registry
    monkeypatch.setattr(brokerhost.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert isinstance(hosted(b, core, ["a"], "auto"), HostedBroker)
    assert hosted(b, core, ["s"], "auto") is b  # plain functions claim from their threads
    assert hosted(b, core, ["a"], "off") is b
    assert isinstance(hosted(b, core, ["s"], "on"), HostedBroker)
    monkeypatch.setattr(brokerhost.os, "sched_getaffinity", lambda pid: {0})
    assert hosted(b, core, ["a"], "auto") is b  # one core: nothing to move the work to
    pg = broker_from_url("postgresql://u@127.0.0.1:1/db?schema=x")
    assert hosted(pg, core, ["a"], "auto") is pg  # measured: no gain on 2 cores
    assert isinstance(hosted(pg, core, ["a"], "on"), HostedBroker)
    rd = broker_from_url("redis://127.0.0.1:1/0")
    assert hosted(rd, core, ["a"], "on") is rd
    with pytest.raises(ConfigError, match="broker_process 'yes'"):
        Worker(app, broker_process="yes")
    app.close()


def test_a_claim_whose_caller_stopped_waiting_gives_its_tasks_back(tmp_path):
    """A hosted claim cancelled while the helper works on it: the tasks it took are
    released when its reply comes, not left leased until their lease expires."""
    url = make_url("sqlite", tmp_path)
    app = _app(url, lease=600.0)

    @app.task(queue="q", name="t")
    async def t(i: int) -> None: ...

    t.send_many([((i,), {}) for i in range(20)])

    async def main() -> tuple[int, int]:
        hb = HostedBroker(broker_from_url(url), url)
        await hb.open()
        try:
            await hb._spawn()
            assert hb._ready, "the helper did not start"
            claim = asyncio.ensure_future(hb.claim(["q"], 10))
            await asyncio.sleep(0)  # the request is written
            claim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await claim
            await _until(lambda: not hb._pending, what="the helper's reply")
            await _until(lambda: not hb._releasing, what="the release")
            st = await hb.stats("q")
            return st.ready, st.leased
        finally:
            await hb.close()

    try:
        assert asyncio.run(main()) == (20, 0)
    finally:
        app.close()
