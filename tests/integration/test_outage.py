"""Server outages with workers running: a Redis restarted mid-run (appendonly, fsync
always) and PostgreSQL backends killed with pg_terminate_backend. Workers reconnect with
backoff and say so once; no enqueue that returned is lost; an enqueue during the outage
raises a clear error instead of dropping the task."""

from __future__ import annotations

import re
import signal
import threading
import time

import pytest

from offload.errors import BrokerUnavailable
from tests.conftest import POSTGRES_URL, make_url

from .harness import Harness
from .test_redis_broker import own_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def _produce(h: Harness, stop: threading.Event, ok: list, failed: list) -> None:
    i = 0
    while not stop.is_set():
        key = f"p{i}"
        i += 1
        try:
            h.mod.crash.send(key)
            ok.append(key)
        except BrokerUnavailable as exc:
            failed.append((key, str(exc)))
        time.sleep(0.002)


def _run_outage(h: Harness, outage) -> tuple[list, list, list]:
    workers = [h.worker("-c", "8") for _ in range(2)]
    stop, ok, failed = threading.Event(), [], []
    producer = threading.Thread(target=_produce, args=(h, stop, ok, failed))
    producer.start()
    time.sleep(1.0)
    outage()
    time.sleep(1.5)
    stop.set()
    producer.join(30)
    try:
        h.wait_for(lambda ev: {e[1] for e in ev if e[0] == "end"} >= set(ok), timeout=60)
    except AssertionError:
        # A stall: show what the workers said and where the tasks are, not only the sink.
        done = {e[1] for e in h.events() if e[0] == "end"}
        print(f"{len(set(ok) - done)} of {len(ok)} returned sends never finished")
        for w in workers:
            w.kill()
            print(f"--- worker {w.pid} output ---\n{w.stdout.read().decode()}")
        print(f"--- queue stats ---\n{_stats(h)}")
        raise
    outputs = []
    for w in workers:
        assert w.poll() is None, "a worker died in the outage"
        w.send_signal(signal.SIGTERM)
        assert w.wait(30) == 0
        outputs.append(w.stdout.read().decode())
    return ok, failed, outputs


def _stats(h: Harness) -> str:
    """The queue's counts as the broker sees them (for a failure report)."""
    import asyncio

    from offload.brokers import broker_from_url

    async def read() -> str:
        b = broker_from_url(h.app.broker_url)
        try:
            await b.open()
            return repr(await b.stats("q"))
        except Exception as exc:
            return f"stats unavailable: {exc}"
        finally:
            await b.close()

    return asyncio.run(read())


#: the worker's one line when the broker goes away (not its shutdown line, which says
#: "broker unreachable at shutdown")
OUTAGE_LINE = "broker unreachable, retrying"


def test_redis_restart_mid_run_loses_no_returned_enqueue(own_server, tmp_path):  # noqa: F811
    url = f"redis://127.0.0.1:{own_server.port}/0?prefix=outage"
    h = Harness(url, tmp_path, PROC_LEASE="2.0")

    def restart():
        own_server.stop()
        time.sleep(0.8)
        own_server.start()

    try:
        ok, failed, outputs = _run_outage(h, restart)
    finally:
        h.close()
    assert len(ok) > 200
    assert failed, "the producer never saw the outage: the test did not test it"
    assert all(str(own_server.port) in msg for _, msg in failed)
    for out in outputs:
        # one line for the outage (a pooled connection found stale just after the restart
        # may add one more pair), never one per retry
        assert 1 <= out.count(OUTAGE_LINE) <= 2, out
        assert "heartbeat failed" not in out
    back = [
        float(m) for out in outputs for m in re.findall(r"reachable again after ([\d.]+)s", out)
    ]
    assert back, outputs
    # a 0.8 s outage: back within the worker's backoff, not after a stuck connection's timeout
    assert max(back) < 3.0, outputs


def test_postgres_backends_terminated_mid_run(tmp_path):
    import psycopg

    base = make_url("postgres", tmp_path)
    app_name = "offload_outage_" + base.rsplit("schema=", 1)[1]
    url = f"{base}&application_name={app_name}"  # so we kill only this test's backends

    h = Harness(url, tmp_path, PROC_LEASE="2.0")

    def terminate():
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            n = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app_name,),
            ).fetchone()[0]
        assert n >= 2

    try:
        ok, failed, _outputs = _run_outage(h, terminate)
    finally:
        h.close()
        from tests.conftest import _drop_pg_schema

        _drop_pg_schema(base)
    assert len(ok) > 200
    # a send whose connection was killed under it fails loudly, never silently
    assert all("PostgreSQL" in msg or "postgres" in msg.lower() for _, msg in failed)
