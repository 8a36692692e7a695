"""SQLite-specific behaviour: WAL, several processes, the doorbell, durability, bad files.

The semantics every broker shares are in tests/conformance; these tests cover what only
the embedded broker has to get right (files, processes, the host's sockets).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import offload
from offload.brokers import broker_from_url
from offload.brokers.base import EnforcedPolicy, Lease, NewTask, QueueStats, TaskMetrics
from offload.brokers.sqlite import SQLiteBroker
from offload.brokers.sqlite.doorbell import Doorbell, wake_dir
from offload.brokers.sqlite.queries import SCHEMA_VERSION, _step_sql
from offload.core.envelope import new_id
from offload.core.policy import QueuePolicy
from offload.errors import (
    BrokerError,
    BrokerFull,
    BrokerRefused,
    BrokerUnavailable,
    BrokerURLError,
    ConfigError,
)

SRC = str(Path(offload.__file__).resolve().parent.parent)


def run(coro):
    """Drive a coroutine that must complete without suspending (the sync facade's way)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("an SQLiteBroker coroutine suspended")


def task(queue: str = "q", *, name: str | None = None, **kw) -> NewTask:
    return NewTask(id=new_id(), queue=queue, payload=b"\x00payload\xff", name=name, **kw)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "broker.db"


@pytest.fixture
def broker(db):
    b = SQLiteBroker(f"sqlite:///{db}")
    run(b.open())
    yield b
    run(b.close())


def run_child(code: str, *args: str, timeout: float = 30) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 30) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


# ---- URL, files, schema ---------------------------------------------------------------------


def test_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = broker_from_url("sqlite:///rel.db")
    assert isinstance(rel, SQLiteBroker)
    assert rel.path == str(tmp_path / "rel.db")
    assert rel.synchronous == "normal" and rel.busy_timeout_ms == 5000
    ab = SQLiteBroker(f"sqlite:///{tmp_path}/abs.db?synchronous=FULL&busy_timeout=250")
    assert ab.path == f"{tmp_path}/abs.db"
    assert ab.synchronous == "full" and ab.busy_timeout_ms == 250
    assert SQLiteBroker.capabilities.inline is True


@pytest.mark.parametrize(
    "url, words",
    [
        ("sqlite:///:memory:", "in-memory"),
        ("sqlite://", "no database file"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout"),
        ("sqlite:///x.db?journal=wal", "unknown parameter 'journal'"),
        ("sqlite:///x.db?synchronus=full", r"'synchronus' \(did you mean 'synchronous'\?\)"),
        ("sqlite:///x.db?prefx=a", "takes synchronous= and busy_timeout="),
        ("sqlite:///x.db?busy_timeout=1&busy_timeout=2", "given twice"),
        ("sqlite:///%20", "no database file"),
        ("sqlite:///data/", "names a directory"),
    ],
)
def test_bad_urls(url, words):
    with pytest.raises(BrokerURLError, match=words) as err:
        broker_from_url(url)  # what App() calls: no I/O, one line
    assert "\n" not in str(err.value)


def test_a_directory_as_the_database_is_a_url_error_at_open(tmp_path):
    b = SQLiteBroker(f"sqlite:///{tmp_path}")
    t0 = time.monotonic()
    with pytest.raises(BrokerURLError, match="is a directory") as err:
        run(b.open())
    assert time.monotonic() - t0 < 2
    assert "\n" not in str(err.value)


def test_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "deeper"
    b = SQLiteBroker(f"sqlite:///{missing}/x.db")
    with pytest.raises(BrokerURLError) as err:
        run(b.open())
    assert str(missing) in str(err.value)
    with pytest.raises(BrokerURLError):  # still, at each try
        run(b.open())
    with pytest.raises(BrokerError, match="not open"):
        run(b.enqueue([task()]))


def test_not_a_database_is_a_url_error_naming_the_path(db):
    # the URL's fault, not an outage: a worker must not wait for it to go away
    db.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    b = SQLiteBroker(f"sqlite:///{db}")
    with pytest.raises(BrokerURLError) as err:
        run(b.open())
    assert str(db) in str(err.value)
    assert "not an SQLite database" in str(err.value)
    assert "\n" not in str(err.value)


def test_wal_schema_version_and_newer_schema_refused(broker, db):
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    raw.close()
    newer = SQLiteBroker(f"sqlite:///{db}")
    with pytest.raises(BrokerError, match="newer"):
        run(newer.open())


def test_a_version_1_database_is_migrated_in_place(db):
    raw = sqlite3.connect(db, isolation_level=None)
    raw.executescript(_step_sql(1) + "PRAGMA user_version = 1;")
    # a declared queue (version 1 set tokens_at on every declaration), a queue only
    # paused, and a task whose lease expired under version 1
    raw.execute(
        "INSERT INTO queues (name, rate, bucket, max_concurrent, lease, dedup_window, tokens,"
        " tokens_at) VALUES ('q', 5.0, 5.0, 3, 30.0, 60.0, 5.0, 1.0)"
    )
    raw.execute("INSERT INTO queues (name, lease, dedup_window, paused) VALUES ('p', 60, 60, 1)")
    raw.execute(
        "INSERT INTO tasks (id, queue, payload, state, visible_at, attempts, enqueued_at, token)"
        " VALUES ('old', 'q', x'00', 1, 1.0, 1, 1.0, 'tok')"
    )
    raw.close()
    b = SQLiteBroker(f"sqlite:///{db}")
    run(b.open())
    assert b._store.conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert run(b.stats("q")).policy == EnforcedPolicy(5.0, 5.0, 3, 30.0, 60.0)
    assert run(b.stats("p")).policy is None and run(b.stats("p")).paused
    (c,) = run(b.claim(["q"], 1))
    assert (c.id, c.attempt, c.expired) == ("old", 2, True)
    run(b.close())


def test_synchronous_option_is_applied(db):
    for mode, value in (("full", 2), ("normal", 1)):
        b = SQLiteBroker(f"sqlite:///{db}?synchronous={mode}")
        run(b.open())
        assert b._store.conn().execute("PRAGMA synchronous").fetchone()[0] == value
        run(b.close())


def test_locked_beyond_busy_timeout_is_unavailable_with_advice(db):
    b = SQLiteBroker(f"sqlite:///{db}?busy_timeout=100")
    run(b.open())
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerUnavailable) as err:
            run(b.enqueue([task()]))
        assert time.monotonic() - t0 >= 0.09
        assert "busy_timeout" in str(err.value) and str(db) in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert run(b.enqueue([task()])) == [True]  # nothing half-done, usable again
    assert run(b.stats("q")).ready == 1
    run(b.close())


HOLDER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
print("go", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:  # a hot writer: holds the lock 5 ms, lets go for 0.5 ms
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO metrics (task) VALUES ('x') ON CONFLICT DO UPDATE SET count = count + 1")
    t = time.perf_counter()
    while time.perf_counter() - t < 0.005:
        pass
    c.execute("COMMIT")
    time.sleep(0.0005)
"""


@pytest.mark.slow
def test_a_hot_writer_does_not_starve_an_enqueue(broker, db):
    # SQLite's own busy handler backs off to 100 ms naps and can miss short gaps for a
    # second; the broker's own lock wait naps at most 1 ms.
    proc = run_child(HOLDER, str(db), "2")
    assert proc.stdout.readline().strip() == "go"
    time.sleep(0.1)
    waits = []
    for _ in range(40):
        t0 = time.perf_counter()
        run(broker.enqueue([task()]))
        waits.append(time.perf_counter() - t0)
        time.sleep(0.01)
    finish(proc)
    assert max(waits) < 0.2, f"an enqueue waited {max(waits) * 1000:.0f} ms for the lock"


def test_a_forked_child_opens_its_own_connection(broker):
    run(broker.enqueue([task()]))  # the parent has a connection now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            run(broker.enqueue([task(), task()]))
            code = 0 if run(broker.stats("q")).ready == 3 else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert run(broker.stats("q")).ready == 3
    run(broker.enqueue([task()]))  # the parent's connection still works


# ---- coroutines, threads --------------------------------------------------------------------


def test_every_coroutine_but_wait_completes_without_suspending(broker):
    run(broker.declare([QueuePolicy("q", rate=1000, max_concurrent=50, lease=30)]))
    assert run(broker.enqueue([task(), task(name="n"), task(name="n")])) == [True, True, False]
    claimed = run(broker.claim(["q"], 3))
    assert len(claimed) == 2
    assert run(broker.extend([c.lease for c in claimed])) == [30.0, 30.0]
    assert run(broker.retry(claimed[0].lease, 0, "err")) is True
    assert run(broker.dead_letter(claimed[1].lease, "err", "tb")) is True
    run(broker.release([]))
    again = run(broker.claim(["q"], 1))
    run(broker.ack([c.lease for c in again]))
    assert run(broker.stats("q")).dead == 1
    assert len(run(broker.dead_letters("q"))) == 1
    assert run(broker.requeue_dead("q")) == 1
    run(broker.set_paused("q", True))
    assert run(broker.purge("q")) == 1
    assert run(broker.delete("q", id="missing")) is False
    run(broker.record([TaskMetrics("t", count=1)]))
    assert run(broker.metrics())[0].count == 1
    assert abs(run(broker.now()) - time.time()) < 1


def test_threads_get_their_own_connections(broker):
    errors, conns = [], set()

    def work():
        try:
            for _ in range(100):
                run(broker.enqueue([task()]))
            conns.add(id(broker._store.conn()))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(conns) == 4
    assert run(broker.stats("q")).ready == 400


def test_claim_uses_the_due_index(broker):
    from offload.brokers.sqlite.queries import queries

    plan = (
        broker._store.conn()
        .execute(
            "EXPLAIN QUERY PLAN " + queries().claim,
            {"queue": "q", "now": 1.0, "until": 2.0, "limit": 100},
        )
        .fetchall()
    )
    details = " | ".join(row[-1] for row in plan)
    assert details.count("COVERING INDEX tasks_due") == 2, details
    assert "SCAN tasks" not in details, details


# ---- several processes ----------------------------------------------------------------------

CLAIMER = """
import sys, time
from offload.brokers.sqlite import SQLiteBroker

def run(coro):
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("suspended")

b = SQLiteBroker(sys.argv[1])
run(b.open())
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
ids = []
while True:
    got = run(b.claim(["q"], 7))
    if not got:
        break
    ids.extend(c.id for c in got)
    time.sleep(0.0005)  # "run" them: lets the other processes in between
    run(b.ack([c.lease for c in got]))
print("\\n".join(ids))
"""


@pytest.mark.slow
def test_processes_claiming_concurrently_never_share_a_task(broker, db):
    ids = {t.id for t in [task() for _ in range(3000)]}
    run(broker.enqueue([NewTask(id=i, queue="q", payload=b"x") for i in ids]))
    start = str(time.time() + 1.5)
    procs = [run_child(CLAIMER, f"sqlite:///{db}", start) for _ in range(3)]
    outs = [set(finish(p).split()) for p in procs]
    assert sum(len(o) for o in outs) == len(ids)
    assert set().union(*outs) == ids
    assert all(o for o in outs), "every process should have claimed some"
    assert run(broker.stats("q")).ready == 0


KILLED = """
import os, signal, sys
from offload.brokers.base import NewTask
from offload.brokers.sqlite import SQLiteBroker
from offload.core.policy import QueuePolicy

def run(coro):
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value

b = SQLiteBroker(sys.argv[1])
run(b.open())
run(b.declare([QueuePolicy("q", lease=0.3)]))
run(b.enqueue([NewTask(id="kept", queue="q", payload=b"survives")]))
run(b.enqueue([NewTask(id="claimed", queue="q", payload=b"too")]))
assert [c.id for c in run(b.claim(["q"], 1))] == ["kept"]
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_enqueued_task_survives_a_killed_process(db):
    url = f"sqlite:///{db}"
    proc = run_child(KILLED, url)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    b = SQLiteBroker(url)
    run(b.open())
    stats = run(b.stats("q"))
    assert (stats.ready, stats.leased) in ((1, 1), (2, 0))  # lease may already be over
    time.sleep(0.35)
    got = sorted(run(b.claim(["q"], 10)), key=lambda c: c.id)
    assert [(c.id, c.payload, c.attempt) for c in got] == [
        ("claimed", b"too", 1),
        ("kept", b"survives", 2),  # the dead worker's run counts
    ]
    run(b.close())


WAITER = """
import asyncio, sys, time
from offload.brokers.sqlite import SQLiteBroker

async def main():
    b = SQLiteBroker(sys.argv[1])
    await b.open()
    print("ready", flush=True)
    t0 = time.monotonic()
    await b.wait(["q"], float(sys.argv[2]))
    print(time.time(), time.monotonic() - t0, flush=True)
    await b.close()

asyncio.run(main())
"""


@pytest.mark.slow
def test_doorbell_wakes_a_waiter_in_another_process_fast(broker, db):
    proc = run_child(WAITER, f"sqlite:///{db}", "10")
    assert proc.stdout.readline().strip() == "ready"
    bells = Path(wake_dir(str(db)))
    deadline = time.monotonic() + 10
    while not (bells.is_dir() and any(bells.glob("*.s"))):
        assert time.monotonic() < deadline, "the waiter never bound its socket"
        time.sleep(0.01)
    time.sleep(0.2)  # let it settle into the wait
    t0 = time.time()
    run(broker.enqueue([task()]))
    woke_at, waited = map(float, finish(proc).split())
    assert woke_at - t0 < 0.05, f"woke {1000 * (woke_at - t0):.1f} ms after the enqueue"
    assert waited < 5
    assert not any(bells.glob("*.s")), "close() should remove the waiter's socket"


# ---- waiting --------------------------------------------------------------------------------


async def test_wait_without_work_sleeps_without_burning_cpu(broker):
    cpu0, t0 = time.process_time(), time.monotonic()
    await broker.wait(["q"], 0.5)
    elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert elapsed >= 0.48
    assert cpu < 0.02, f"{cpu:.3f} s of CPU in a 0.5 s wait: busy polling"


async def test_wait_returns_at_once_when_work_is_due(broker):
    await broker.enqueue([task()])
    t0 = time.monotonic()
    await broker.wait(["q"], 5)
    assert time.monotonic() - t0 < 0.05


async def test_wait_wakes_when_an_eta_comes_due(broker):
    await broker.enqueue([task(delay=0.25)])
    t0 = time.monotonic()
    await broker.wait(["q"], 5)
    assert 0.2 <= time.monotonic() - t0 < 0.4
    assert len(await broker.claim(["q"], 1)) == 1


async def test_wait_wakes_when_a_lease_expires(broker):
    await broker.declare([QueuePolicy("q", lease=0.2)])
    await broker.enqueue([task()])
    assert len(await broker.claim(["q"], 1)) == 1
    t0 = time.monotonic()
    await broker.wait(["q"], 5)
    assert 0.15 <= time.monotonic() - t0 < 0.4
    assert (await broker.claim(["q"], 1))[0].attempt == 2


async def test_wait_wakes_on_enqueue_from_another_thread(broker):
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    loop.call_later(0.1, lambda: threading.Thread(target=run_enqueue, args=(broker,)).start())
    await broker.wait(["q"], 5)
    assert 0.09 <= time.monotonic() - t0 < 0.3


def run_enqueue(broker: SQLiteBroker) -> None:
    run(broker.enqueue([task()]))


async def test_paused_queue_does_not_wake_but_resume_does(broker):
    await broker.enqueue([task()])
    await broker.set_paused("q", True)
    t0 = time.monotonic()
    await broker.wait(["q"], 0.2)
    assert time.monotonic() - t0 >= 0.18
    asyncio.get_running_loop().call_later(0.05, lambda: run(broker.set_paused("q", False)))
    t0 = time.monotonic()
    await broker.wait(["q"], 5)
    assert time.monotonic() - t0 < 0.3


def test_dead_sockets_are_unlinked_and_long_paths_fall_back(tmp_path):
    bell = Doorbell(str(tmp_path / "x.db"))
    os.makedirs(bell.dir)
    stale = os.path.join(bell.dir, "0123456789abcdef.s")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(stale)
    s.close()  # its process "died": the file stays, nobody reads it
    bell.ring()
    assert not os.path.exists(stale)
    bell.close()

    long_db = "/" + "d" * 120 + "/x.db"
    fallback = wake_dir(long_db)
    assert not fallback.startswith(long_db)
    assert len(os.path.join(fallback, "0123456789abcdef.s")) <= 107
    assert wake_dir(long_db) == fallback  # every process computes the same place


# ---- policies -------------------------------------------------------------------------------


def test_name_reserved_while_it_exists_and_for_the_dedup_window(broker):
    run(broker.declare([QueuePolicy("q", dedup_window=0.3)]))
    assert run(broker.enqueue([task(name="n")])) == [True]
    assert run(broker.enqueue([task(name="n"), task(name="m")])) == [False, True]
    assert run(broker.enqueue([task("other", name="n")])) == [True]  # per queue
    claimed = {c.name: c for c in run(broker.claim(["q"], 10))}
    assert run(broker.enqueue([task(name="n")])) == [False]  # leased
    run(broker.ack([claimed["n"].lease]))
    assert run(broker.enqueue([task(name="n")])) == [False]  # within the window
    assert run(broker.delete("q", name="m")) is True  # any state, leased too
    assert run(broker.delete("q", name="m")) is False
    assert run(broker.delete("q", id=claimed["m"].id)) is False
    time.sleep(0.35)
    assert run(broker.enqueue([task(name="n"), task(name="m")])) == [True, True]
    assert run(broker.delete("q", name="n")) is True
    assert run(broker.enqueue([task(name="n")])) == [False]


def test_token_bucket_starts_full_and_refills(broker):
    run(broker.declare([QueuePolicy("q", rate="10/s", bucket_size=3)]))
    run(broker.enqueue([task() for _ in range(20)]))
    assert len(run(broker.claim(["q"], 10))) == 3
    assert len(run(broker.claim(["q"], 10))) == 0
    time.sleep(0.25)  # 2.5 tokens
    assert len(run(broker.claim(["q"], 10))) == 2
    time.sleep(1.0)  # refill caps at the bucket size
    assert len(run(broker.claim(["q"], 10))) == 3
    run(broker.declare([QueuePolicy("q", rate="10/s", bucket_size=3)]))  # keeps the state
    assert len(run(broker.claim(["q"], 10))) == 0


async def test_wait_wakes_when_a_rate_token_comes_due(broker):
    await broker.declare([QueuePolicy("q", rate="5/s", bucket_size=1)])
    await broker.enqueue([task(), task()])
    assert len(await broker.claim(["q"], 10)) == 1
    t0 = time.monotonic()
    await broker.wait(["q"], 5)
    assert 0.15 <= time.monotonic() - t0 < 0.35
    assert len(await broker.claim(["q"], 10)) == 1


async def test_max_concurrent_caps_leases_and_an_ack_wakes_waiters(broker):
    await broker.declare([QueuePolicy("q", max_concurrent=2)])
    await broker.enqueue([task() for _ in range(5)])
    first = await broker.claim(["q"], 10)
    assert len(first) == 2
    assert await broker.claim(["q"], 10) == []

    def ack_later():
        time.sleep(0.1)
        run(broker.ack([first[0].lease]))

    threading.Thread(target=ack_later).start()
    t0 = time.monotonic()
    await broker.wait(["q"], 5)
    assert 0.09 <= time.monotonic() - t0 < 0.3
    assert len(await broker.claim(["q"], 10)) == 1
    assert await broker.claim(["q"], 10) == []


def test_claim_spreads_the_limit_over_queues(broker):
    run(broker.enqueue([task("a") for _ in range(10)] + [task("b") for _ in range(2)]))
    got = run(broker.claim(["a", "b"], 6))
    assert sorted(c.queue for c in got) == ["a"] * 4 + ["b"] * 2
    got = run(broker.claim(["a", "b"], 6))
    assert [c.queue for c in got] == ["a"] * 6


def test_stale_leases_are_ignored_but_by_ack(broker):
    run(broker.enqueue([task()]))
    (c,) = run(broker.claim(["q"], 1))
    stale = Lease(c.queue, c.id, "not-the-token")
    assert run(broker.retry(stale, 0, "x")) is False
    assert run(broker.dead_letter(stale, "x", "")) is False
    assert run(broker.extend([stale, c.lease])) == [None, 60.0]
    run(broker.release([stale]))
    assert run(broker.stats("q")).leased == 1
    run(broker.release([c.lease]))
    (again,) = run(broker.claim(["q"], 1))
    assert again.attempt == 1 and again.token != c.token
    run(broker.ack([stale]))  # a finished run wins, whatever its token
    assert run(broker.stats("q")) == QueueStats("q")


def test_extend_returns_the_stored_lease_and_none_when_lost(broker):
    run(broker.declare([QueuePolicy("q", lease=30)]))
    run(broker.enqueue([task(), task("other")]))
    b, a = sorted(run(broker.claim(["q", "other"], 2)), key=lambda c: c.queue)
    assert a.lease_until - a.now == pytest.approx(30.0)  # q declared
    assert b.lease_until - b.now == pytest.approx(60.0)  # other: the default
    run(broker.declare([QueuePolicy("q", lease=12.5)]))  # a later deploy changed it
    t0 = time.time()
    assert run(broker.extend([a.lease, b.lease])) == [12.5, 60.0]
    (until,) = (
        broker._store.conn()
        .execute("SELECT visible_at FROM tasks WHERE id = ?", (a.id,))
        .fetchone()
    )
    assert t0 + 12.5 <= until <= time.time() + 12.5
    run(broker.ack([a.lease]))
    assert run(broker.extend([a.lease, Lease("q", "unknown", "t")])) == [None, None]


@pytest.mark.parametrize("meanwhile", ["re-claimed", "expired", "dead", "retried"])
def test_a_late_ack_wins(broker, meanwhile):
    run(broker.declare([QueuePolicy("q", lease=0.05, max_concurrent=1, dedup_window=60)]))
    run(broker.enqueue([task(name="n")]))
    (late,) = run(broker.claim(["q"], 1))
    time.sleep(0.06)  # the lease expires while the run goes on
    if meanwhile == "re-claimed":
        (other,) = run(broker.claim(["q"], 1))
        assert other.expired and run(broker.stats("q")).leased == 1
    elif meanwhile == "dead":  # another worker's "worker died" verdict
        (other,) = run(broker.claim(["q"], 1))
        assert run(broker.dead_letter(other.lease, "worker died", "")) is True
    elif meanwhile == "retried":
        run(broker.declare([QueuePolicy("q", lease=60, max_concurrent=1, dedup_window=60)]))
        (other,) = run(broker.claim(["q"], 1))
        assert run(broker.retry(other.lease, 30, "x")) is True
    run(broker.ack([late.lease, Lease("q", "unknown", "t")]))
    assert run(broker.stats("q")) == QueueStats("q", policy=run(broker.stats("q")).policy)
    assert run(broker.enqueue([task(name="n")])) == [False]  # name kept for the window
    run(broker.enqueue([task()]))
    assert len(run(broker.claim(["q"], 1))) == 1  # max_concurrent's slot is free again


def test_enqueue_is_idempotent_by_id(broker):
    leased, dead = task(name="n1"), task(name="n2")
    run(broker.enqueue([leased, dead]))
    by_id = {c.id: c for c in run(broker.claim(["q"], 2))}
    run(broker.dead_letter(by_id[dead.id].lease, "x", ""))
    ready, scheduled = task(name="n3"), task(name="n4", delay=100)
    run(broker.enqueue([ready, scheduled]))
    conn = broker._store.conn()
    tasks_before = conn.execute("SELECT * FROM tasks ORDER BY seq").fetchall()
    names_before = conn.execute("SELECT * FROM names ORDER BY name").fetchall()
    # the same ids again: same name, no name, another name; another payload and eta
    again = [
        NewTask(id=t.id, queue="q", payload=b"other", name=name, delay=delay)
        for t in (ready, scheduled, leased, dead)
        for name, delay in ((t.name, 0.0), (None, 5.0), ("fresh", 0.0))
    ]
    assert run(broker.enqueue(again)) == [True] * len(again)
    for t in again:  # one by one too
        assert run(broker.enqueue([t])) == [True]
    assert conn.execute("SELECT * FROM tasks ORDER BY seq").fetchall() == tasks_before
    assert conn.execute("SELECT * FROM names ORDER BY name").fetchall() == names_before
    stats = run(broker.stats("q"))
    assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (1, 1, 1, 1)


def test_a_batch_holding_an_id_twice_creates_it_once(broker):
    first = task(name="a")
    twice = [first, NewTask(id=first.id, queue="q", payload=b"2nd", name="b"), task()]
    twice.append(NewTask(id=twice[2].id, queue="q", payload=b"2nd", name="c"))
    assert run(broker.enqueue(twice)) == [True] * 4
    got = run(broker.claim(["q"], 10))
    assert sorted((c.id, c.name, c.payload) for c in got) == sorted(
        (t.id, t.name, t.payload) for t in (twice[0], twice[2])
    )
    assert run(broker.enqueue([task(name="b"), task(name="c")])) == [True, True]


def test_release_with_a_delay(broker):
    run(broker.enqueue([task()]))
    (c,) = run(broker.claim(["q"], 1))
    run(broker.release([Lease(c.queue, c.id, "stale")], delay=0.0))  # ignored
    assert run(broker.stats("q")).leased == 1
    run(broker.release([c.lease], delay=0.3))
    stats = run(broker.stats("q"))
    assert (stats.leased, stats.scheduled, stats.ready) == (0, 1, 0)
    assert run(broker.claim(["q"], 1)) == []
    time.sleep(0.32)
    (again,) = run(broker.claim(["q"], 1))
    assert again.attempt == 1 and again.id == c.id  # not counted


@pytest.mark.parametrize("delay", [-0.1, float("nan"), float("inf"), "1", None, True])
def test_release_delay_is_checked_before_any_io(db, delay):
    closed = SQLiteBroker(f"sqlite:///{db}")  # never opened: a check that needed I/O fails
    with pytest.raises(ConfigError, match=f"delay={delay!r}"):
        run(closed.release([Lease("q", "x", "t")], delay=delay))


@pytest.mark.parametrize("limit", [-1, 10_001, 1.5, True, "10", None])
def test_dead_letters_limit_is_checked_before_any_io(db, limit):
    closed = SQLiteBroker(f"sqlite:///{db}")
    with pytest.raises(ConfigError, match=f"limit={limit!r}"):
        run(closed.dead_letters("q", limit))


def test_dead_letters_limit_bounds(broker):
    run(broker.enqueue([task(), task()]))
    for c in run(broker.claim(["q"], 2)):
        run(broker.dead_letter(c.lease, "boom", "tb"))
    assert run(broker.dead_letters("q", 0)) == []
    assert len(run(broker.dead_letters("q", 1))) == 1
    assert len(run(broker.dead_letters("q", 10_000))) == 2


def test_a_claim_says_when_it_takes_over_an_expired_lease(broker):
    run(broker.declare([QueuePolicy("q", lease=0.1)]))
    run(broker.enqueue([task()]))
    (c,) = run(broker.claim(["q"], 1))
    assert c.expired is False  # after enqueue
    assert c.lease_until - c.now == pytest.approx(0.1)
    time.sleep(0.12)  # its worker "died"
    (c,) = run(broker.claim(["q"], 1))
    assert (c.attempt, c.expired) == (2, True)
    assert run(broker.retry(c.lease, 0, "failed")) is True
    (c,) = run(broker.claim(["q"], 1))
    assert (c.attempt, c.expired) == (3, False)  # a retry the policy scheduled
    run(broker.release([c.lease]))
    (c,) = run(broker.claim(["q"], 1))
    assert (c.attempt, c.expired) == (3, False)
    time.sleep(0.12)
    (c,) = run(broker.claim(["q"], 1))
    assert c.expired is True
    assert run(broker.dead_letter(c.lease, "gave up", "")) is True
    assert run(broker.requeue_dead("q")) == 1
    (c,) = run(broker.claim(["q"], 1))
    assert (c.attempt, c.expired) == (1, False)


def test_stats_carry_the_enforced_policy(broker):
    assert run(broker.stats("q")).policy is None  # never declared
    run(broker.set_paused("q", True))
    assert run(broker.stats("q")).policy is None  # paused is not declared
    run(broker.declare([QueuePolicy("q", rate="10/s", bucket_size=3, max_concurrent=2, lease=30)]))
    assert run(broker.stats("q")).policy == EnforcedPolicy(10.0, 3.0, 2, 30.0, 3600.0)
    run(broker.declare([QueuePolicy("q", lease=5, dedup_window=7)]))  # the last one wins
    stats = run(broker.stats("q"))
    assert stats.policy == EnforcedPolicy(None, None, None, 5.0, 7.0)
    assert stats.paused  # a declaration keeps the pause


# ---- errors: a refused request, a full disk ---------------------------------------------------


def test_a_lone_surrogate_is_refused_and_nothing_is_half_done(broker):
    run(broker.enqueue([task(), task()]))
    first, _ = run(broker.claim(["q"], 2))
    for call, what in (
        (lambda: broker.retry(first.lease, 0, "bad \ud800 text"), "retry"),
        (lambda: broker.dead_letter(first.lease, "boom", "tb \udfff"), "dead_letter"),
    ):
        with pytest.raises(BrokerRefused) as err:
            run(call())
        assert what in str(err.value) and "\\ud" in str(err.value)
        assert not isinstance(err.value, BrokerUnavailable)  # not an outage: do not wait
    assert run(broker.stats("q")).leased == 2  # both still leased, untouched
    assert run(broker.retry(first.lease, 0, "clean")) is True
    with pytest.raises(BrokerRefused, match="enqueue"):
        run(broker.enqueue([task(), task(name="n\ud800"), task()]))
    assert run(broker.stats("q")).ready == 1  # the batch did not half happen
    assert run(broker.enqueue([task(name="n")])) == [True]  # nor did its name reservation


def test_a_too_big_payload_is_refused(broker):
    broker._store.conn().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 10_000)
    with pytest.raises(BrokerRefused, match="enqueue refused: string or blob too big"):
        run(broker.enqueue([task(), NewTask(id=new_id(), queue="q", payload=b"x" * 20_000)]))
    assert run(broker.stats("q")).ready == 0


def test_a_full_database_is_broker_full_and_nothing_is_written(broker):
    run(broker.enqueue([task()]))
    conn = broker._store.conn()
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")  # what a full disk does: SQLITE_FULL
    big = [NewTask(id=new_id(), queue="q", payload=b"x" * 4096) for _ in range(50)]
    with pytest.raises(BrokerFull) as err:
        run(broker.enqueue(big))
    assert isinstance(err.value, BrokerUnavailable)  # workers wait it out
    assert "full" in str(err.value) and "enqueue" in str(err.value)
    assert run(broker.stats("q")).ready == 1
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert run(broker.enqueue(big)) == [True] * 50


# ---- speed (reported, not asserted: timing belongs to bench/) -------------------------------


def test_throughput_smoke(db, capsys):
    b = SQLiteBroker(f"sqlite:///{db}")
    run(b.open())
    n = 500
    t0 = time.perf_counter()
    for _ in range(n):
        run(b.enqueue([task()]))
    one = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    run(b.enqueue([task() for _ in range(1000)]))
    batch = 1000 / (time.perf_counter() - t0)
    t0, cycles = time.perf_counter(), 0
    while got := run(b.claim(["q"], 100)):
        run(b.ack([c.lease for c in got]))
        cycles += 1
    per_cycle = (time.perf_counter() - t0) / cycles
    run(b.close())
    with capsys.disabled():
        print(
            f"\nsqlite: enqueue {one:,.0f}/s one by one, {batch:,.0f}/s in a batch; "
            f"claim100+ack100 {per_cycle * 1000:.2f} ms"
        )
    assert cycles == 15
