"""The worker processes behind ``offload run APP --topology FILE``.

One ``offload worker APP --pool NAME`` process per pool replica, each line it prints
prefixed with ``[pool.N]``. The supervisor:

- starts a worker again when it exits on its own, waiting longer each time it dies young;
- on SIGTERM or SIGINT passes one SIGTERM to each worker so they drain within ``grace``; a
  second signal passes another (the workers then skip their grace);
- on SIGHUP rolls the workers over to the code now on disk: it starts as many new workers
  as each pool runs (new processes import the app afresh), waits until every one of them
  is up, then drains the old ones (SIGTERM, ``grace``). Capacity never drops below what it
  was, and a drained worker releases what it did not finish to the new ones, so nothing is
  lost. A new worker that dies before it is up aborts the reload and the old ones keep
  running. A SIGHUP during a reload is done after it;
- with ``autoscale``, reads each pool's queues from the broker a few times a second and
  lets :func:`offload.autoscale.decide` choose its worker count within ``replicas``:
  starting workers, or draining the newest ones. Each change is one log line, ``pool:
  from→to workers: why``.

Workers run in their own process group, so a terminal's Ctrl-C reaches them once, through
here. A worker is *up* once it logs its ``worker pid ...`` start line (its app imported and
its queues checked), or after :data:`UP_FALLBACK` seconds alive.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .autoscale import ScalePolicy, ScaleState, Signals, decide, pool_signals, queue_signals

if TYPE_CHECKING:
    from .app import App
    from .brokers.base import Broker

__all__ = ["Supervisor", "read_signals", "read_signals_async"]

UP_MARK = " worker pid "  # in the line `offload worker` logs once its app is loaded
UP_FALLBACK = 20.0  # seconds alive after which a worker that never said so counts as up
RELOAD_TIMEOUT = 120.0  # seconds new workers get to come up before a reload is abandoned
KILL_AFTER = 15.0  # seconds past the grace before a worker that did not stop is killed


def _say(lock: threading.Lock, line: str) -> None:
    with lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _Child:
    """One worker process of one pool, and the thread copying its output with a prefix."""

    def __init__(self, pool: str, index: int, argv: list[str], lock: threading.Lock) -> None:
        self.pool, self.index = pool, index
        self.label = f"{pool}.{index}"
        self.argv = argv
        self.lock = lock
        self.proc: subprocess.Popen[bytes] | None = None
        self.reader: threading.Thread | None = None
        self.started = 0.0
        self.up_at: float | None = None
        self.failures = 0  # deaths in a row that came soon after a start
        self.restart_at: float | None = None
        self.terms = 0  # SIGTERMs sent to this process
        self.kill_at: float | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,  # a terminal's Ctrl-C reaches the worker once, through us
        )
        self.started = time.monotonic()
        self.up_at = None
        self.restart_at = None
        self.terms = 0
        self.reader = threading.Thread(
            target=self._copy, args=(self.proc,), name=f"offload-run-{self.label}", daemon=True
        )
        self.reader.start()
        _say(self.lock, f"[offload] started {self.label} (pid {self.proc.pid})")

    def _copy(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if self.up_at is None and UP_MARK in text and proc is self.proc:
                self.up_at = time.monotonic()
            _say(self.lock, f"[{self.label}] {text}")

    def is_up(self, now: float) -> bool:
        if not self.alive():
            return False
        if self.up_at is None and now - self.started >= UP_FALLBACK:
            self.up_at = now
        return self.up_at is not None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def drain(self, grace: float, hurry: bool = False) -> None:
        """SIGTERM once (twice with ``hurry``: skip the grace); killed if it outlives it."""
        if not self.alive() or self.terms >= (2 if hurry else 1):
            return
        self.signal(signal.SIGTERM)
        self.terms += 1
        self.kill_at = time.monotonic() + (0.0 if self.terms > 1 else grace) + KILL_AFTER

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class _Pool:
    """One pool's workers: ``active`` (running, starting or waiting to be started again),
    ``incoming`` (a reload's, not up yet) and ``draining`` (told to stop), with its scaling
    policy and state."""

    def __init__(
        self, name: str, argv: list[str], policy: ScalePolicy, queues: tuple[str, ...]
    ) -> None:
        self.name, self.argv, self.policy, self.queues = name, argv, policy, queues
        self.active: list[_Child] = []
        self.incoming: list[_Child] = []
        self.draining: list[_Child] = []
        self.state = ScaleState()
        self.last: tuple[int, int] | None = None  # the last decision logged (from, to)

    def everyone(self) -> list[_Child]:
        return [*self.active, *self.incoming, *self.draining]

    def spawn(self, lock: threading.Lock, into: list[_Child]) -> _Child:
        """A new worker, not started, with the lowest index free in the pool, added to
        ``into`` (its active or incoming list)."""
        used = {c.index for c in self.everyone()}
        index = next(i for i in range(1, len(used) + 2) if i not in used)
        into.append(child := _Child(self.name, index, self.argv, lock))
        return child

    def retire(self, c: _Child, grace: float) -> None:
        """Drain ``c`` (one waiting to be started again is simply forgotten)."""
        if c.alive():
            self.draining.append(c)
            c.drain(grace)


async def read_signals_async(broker: Broker, queues: list[str]) -> dict[str, Signals]:
    """Each queue's signals, from one open broker (its clock for the ages)."""
    stats = [await broker.stats(q) for q in queues]
    now = await broker.now()
    return {s.queue: queue_signals(s.ready, s.leased, s.oldest_ready_at, now) for s in stats}


def read_signals(app: App, queues: list[str]) -> dict[str, Signals]:
    """Each queue's signals, read through the App's facade without declaring anything."""
    return app.registry.call(lambda b: read_signals_async(b, queues), declare=False)


class _Poller:
    """Reads every autoscaled pool's signals every ``interval`` seconds on a thread of its
    own (its own event loop and broker connection), so a slow or unreachable broker never
    holds up the supervisor's signal handling; a failed read leaves the counts as they are."""

    def __init__(
        self, app: App, pools: dict[str, tuple[str, ...]], interval: float, lock: threading.Lock
    ) -> None:
        self.app, self.pools, self.interval, self.lock = app, pools, interval, lock
        self.latest: dict[str, Signals] | None = None
        self.read_at = 0.0  # monotonic time of the last good read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="offload-autoscale", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def signals(self, now: float) -> dict[str, Signals] | None:
        """The last read, unless it is too old to act on (a broker call that hangs)."""
        if self.latest is None or now - self.read_at > max(2.0, 5 * self.interval):
            return None
        return self.latest

    def _main(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        broker = self.app.registry.new_broker()
        queues = sorted({q for qs in self.pools.values() for q in qs})
        failing = False
        opened = False
        try:
            while not self._stop.is_set():
                try:
                    if not opened:
                        await broker.open()
                        opened = True
                    by_queue = await read_signals_async(broker, queues)
                except Exception as exc:  # the broker's outage: hold the counts, say it once
                    if not failing:
                        _say(
                            self.lock,
                            f"[offload] autoscale: cannot read the broker ({exc}); "
                            "holding the worker counts until it answers",
                        )
                    failing = True
                    self.latest = None
                else:
                    if failing:
                        _say(self.lock, "[offload] autoscale: reading the broker again")
                    failing = False
                    self.latest = {
                        p: pool_signals(by_queue[q] for q in qs) for p, qs in self.pools.items()
                    }
                    self.read_at = time.monotonic()
                await asyncio.sleep(self.interval)
        finally:
            if opened:
                try:
                    await broker.close()
                except Exception:
                    pass


class Supervisor:
    """Runs ``pools`` (name -> (queues, policy)) as worker processes of ``app_spec``; see
    the module docstring. :meth:`run` blocks until SIGTERM/SIGINT and every worker stopped."""

    def __init__(
        self,
        app_spec: str,
        app: App,
        topology: str,
        pools: dict[str, tuple[tuple[str, ...], ScalePolicy]],
        *,
        concurrency: int | None,
        grace: float,
        autoscale: bool = False,
    ) -> None:
        self.app, self.grace, self.autoscale = app, grace, autoscale
        self.lock = threading.Lock()
        self.pools: dict[str, _Pool] = {}
        for name, (queues, policy) in pools.items():
            argv = [sys.executable, "-m", "offload", "worker", app_spec, "--pool", name]
            argv += ["--topology", topology, "--grace", repr(grace)]
            if concurrency is not None:
                argv += ["-c", str(concurrency)]
            self.pools[name] = _Pool(name, argv, policy, queues)
        fastest = min((p.policy.target_latency for p in self.pools.values()), default=2.0)
        self.interval = min(0.5, max(0.1, fastest / 4))  # a few reads per target latency
        self._stops: list[int] = []
        self._hups: list[int] = []
        self._reload_at: float | None = None  # when the reload under way began
        self._reloads = 0
        self._retiring: list[list[_Child]] = []  # per reload, the old workers draining

    def say(self, line: str) -> None:
        _say(self.lock, f"[offload] {line}")

    # -- running ----------------------------------------------------------------------------

    def run(self) -> int:
        """Start the pools' workers and supervise them; returns the exit status (0 when
        every worker drained cleanly)."""

        def on_stop(signum: int, frame: Any) -> None:
            self._stops.append(signum)

        def on_hup(signum: int, frame: Any) -> None:
            self._hups.append(signum)

        handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup}
        previous = {s: signal.signal(s, h) for s, h in handlers.items()}
        poller = None
        try:
            if self.autoscale:
                poller = _Poller(
                    self.app, {n: p.queues for n, p in self.pools.items()}, self.interval, self.lock
                )
                poller.start()
            for p in self.pools.values():
                lo = p.policy.minimum if self.autoscale else max(1, p.policy.minimum)
                for _ in range(lo):
                    p.spawn(self.lock, p.active).start()
                if self.autoscale:
                    lo, hi = p.policy.minimum, p.policy.maximum
                    self.say(
                        f"autoscale {p.name}: {lo}-{hi} worker(s), target latency "
                        f"{p.policy.target_latency:g}s, cooldown {p.policy.cooldown:g}s"
                    )
            return self._loop(poller)
        finally:
            if poller is not None:
                poller.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _everyone(self) -> list[_Child]:
        return [c for p in self.pools.values() for c in p.everyone()]

    def _loop(self, poller: _Poller | None) -> int:
        passed = 0  # stop signals passed on to the workers
        next_scale = 0.0
        while True:
            now = time.monotonic()
            if len(self._stops) > passed:
                passed = len(self._stops)
                everyone = self._everyone()
                word = "draining" if passed == 1 else "hurrying"
                alive = [c for c in everyone if c.alive()]
                self.say(f"signal received: {word} {len(alive)} worker(s)")
                for c in everyone:
                    c.drain(self.grace, hurry=passed > 1)
            if passed:
                everyone = self._everyone()
                if not any(c.alive() for c in everyone):
                    break
                self._kill_stragglers(everyone, now)
            else:
                for p in self.pools.values():
                    for c in p.active:
                        self._watch(c, now)
                    self._reap(p, now)
                self._retired()
                if self._reload_at is not None:
                    self._step_reload(now)
                elif len(self._hups) > self._reloads:
                    self._begin_reload(now)
                elif poller is not None and now >= next_scale:
                    next_scale = now + self.interval
                    latest = poller.signals(now)
                    if latest is not None:
                        self._scale(latest, now)
            time.sleep(0.05)
        return self._finish()

    def _finish(self) -> int:
        status = 0
        for c in self._everyone():
            if c.proc is None:
                continue
            rc = c.proc.wait()
            if c.reader is not None:
                c.reader.join(5)
            if rc != 0:
                self.say(f"{c.label} exited with status {rc}")
                status = 1
        self.say("every worker stopped")
        return status

    def _kill_stragglers(self, children: list[_Child], now: float) -> None:
        for c in children:
            if c.alive() and c.kill_at is not None and now >= c.kill_at:
                self.say(f"{c.label} did not stop in time: killing it")
                c.signal(signal.SIGKILL)
                c.kill_at = None

    def _watch(self, c: _Child, now: float) -> None:
        """Start a worker again once it exited on its own, waiting longer (up to 30 s) the
        more often in a row it died within a minute of starting: a broken deploy must not
        spin the machine."""
        if c.restart_at is not None:
            if now >= c.restart_at:
                c.start()
            return
        if c.proc is None:
            return
        rc = c.proc.poll()
        if rc is None:
            return
        if c.reader is not None:
            c.reader.join(1)  # its last lines (often the reason) come before ours
        c.failures = c.failures + 1 if now - c.started < 60 else 1
        delay = min(30.0, 0.5 * 2 ** (c.failures - 1))
        self.say(f"{c.label} exited with status {rc}; starting it again in {delay:g}s")
        c.restart_at = now + delay

    def _reap(self, p: _Pool, now: float) -> None:
        """Forget the draining workers that stopped; kill those past their grace."""
        for c in list(p.draining):
            if c.alive():
                continue
            assert c.proc is not None
            rc = c.proc.wait()
            if c.reader is not None:
                c.reader.join(1)
            if rc == 0:
                self.say(f"{c.label} drained and stopped")
            else:
                self.say(f"{c.label} exited with status {rc} while draining")
            p.draining.remove(c)
        self._kill_stragglers(p.draining, now)

    # -- scaling ----------------------------------------------------------------------------

    def _scale(self, latest: dict[str, Signals], now: float) -> None:
        for name, p in self.pools.items():
            signals = latest.get(name)
            if signals is None:
                continue
            starting = sum(1 for c in p.active if not c.is_up(now))
            d = decide(p.policy, signals, len(p.active), now, p.state, starting)
            p.state = d.state
            if d.change > 0:
                new = [p.spawn(self.lock, p.active) for _ in range(d.change)]
                self.say(f"autoscale {name}: {d.workers}→{d.target} workers: {d.reason}")
                for c in new:
                    c.start()
            elif d.change < 0:
                # first the ones waiting to be started again, then the newest
                order = sorted(p.active, key=lambda c: (c.alive(), c.index))
                going = order[: -d.change]
                for c in going:
                    p.active.remove(c)
                    p.retire(c, self.grace)
                labels = ", ".join(c.label for c in going)
                self.say(
                    f"autoscale {name}: {d.workers}→{d.target} workers: {d.reason}; "
                    f"draining {labels}"
                )

    # -- rolling deploys --------------------------------------------------------------------

    def _begin_reload(self, now: float) -> None:
        self._reloads = len(self._hups)  # every SIGHUP so far is served by this reload
        new = [p.spawn(self.lock, p.incoming) for p in self.pools.values() for _ in p.active]
        if not new:
            self.say("reload (SIGHUP): no pool runs a worker; new workers will run the new code")
            return
        self.say(f"reload (SIGHUP): starting new worker(s) {', '.join(c.label for c in new)}")
        self._reload_at = now
        for c in new:
            c.start()

    def _step_reload(self, now: float) -> None:
        assert self._reload_at is not None
        new = [c for p in self.pools.values() for c in p.incoming]
        dead = next((c for c in new if not c.alive()), None)
        if dead is not None or now - self._reload_at > RELOAD_TIMEOUT:
            if dead is not None:
                assert dead.proc is not None
                if dead.reader is not None:
                    dead.reader.join(1)
                why = f"{dead.label} exited with status {dead.proc.poll()} before it was up"
            else:
                why = f"the new workers were not up within {RELOAD_TIMEOUT:g}s"
            self.say(f"reload failed: {why}; the old workers keep running")
            for p in self.pools.values():
                for c in p.incoming:
                    p.retire(c, self.grace)
                p.incoming = []
            self._reload_at = None
            return
        if not all(c.is_up(now) for c in new):
            return
        old_all: list[_Child] = []
        for p in self.pools.values():
            if p.incoming:
                old, p.active, p.incoming = p.active, p.incoming, []
                for c in old:
                    p.retire(c, self.grace)
                old_all += old
        labels = ", ".join(c.label for c in old_all)
        self.say(
            f"reload: new worker(s) up in {now - self._reload_at:.1f}s; draining the old "
            f"{labels} (SIGTERM, grace {self.grace:g}s)"
        )
        self._retiring.append(old_all)
        self._reload_at = None

    def _retired(self) -> None:
        for item in list(self._retiring):
            if not any(c.alive() for c in item):
                self.say("reload done: every old worker drained")
                self._retiring.remove(item)
