"""When a pool needs more or fewer worker processes: signals in, a decision out.

Pure functions of numbers (no clock, no broker, no processes), so every rule can be tested
on its own; ``offload run --autoscale`` (:mod:`offload.supervisor`) reads the broker,
calls :func:`decide` and starts or drains workers, and an outside autoscaler can read the
same signals from ``offload queues --pools --json`` or ``/metrics``.

The rules, per pool, with ``slots = workers x concurrency``:

- **Up** when work waits and either the oldest ready task has waited longer than
  ``target_latency``, or every slot is taken (``in_flight >= slots``), or the pool has no
  worker at all (a pool with ``min = 0`` wakes on its first task). The target is what the
  work in sight needs, ``ceil((in_flight + ready) / concurrency)``, at least one more, at
  most ``max(step_up, workers)`` more at once (Kubernetes' HPA default: 4 pods or 100%),
  never above ``max``. While workers started by an earlier decision are still starting, a
  latency or busy signal alone adds none: they are the capacity on its way.
- **Down** after ``cooldown`` seconds during which the capacity was spare without a break
  (nothing has waited longer than half the target latency, and one worker fewer would hold
  every task in flight and ready), and never within ``cooldown`` of the last change. Then
  at most half of the workers go (at least one), never below what the work in flight
  needs, nor below ``min``; the count starts again from there. The gap between the up
  threshold (``target_latency``) and the spare one (half of it, one worker to spare) is the
  hysteresis that keeps a steady load from flapping.
- Outside ``[min, max]`` (a crash loop, a changed topology) the count is brought back in
  range first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .core.policy import DEFAULT_CONCURRENCY

if TYPE_CHECKING:
    from .topology import Pool

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_COOLDOWN",
    "DEFAULT_STEP_UP",
    "DEFAULT_TARGET_LATENCY",
    "Decision",
    "ScalePolicy",
    "ScaleState",
    "Signals",
    "decide",
    "in_flight_cap",
    "pool_signals",
    "queue_signals",
    "workers_needed",
]

DEFAULT_TARGET_LATENCY = 2.0
DEFAULT_COOLDOWN = 60.0
DEFAULT_STEP_UP = 4


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    """One pool's bounds and targets, from its topology entry."""

    minimum: int
    maximum: int
    concurrency: int  # tasks in flight per worker
    target_latency: float = DEFAULT_TARGET_LATENCY
    cooldown: float = DEFAULT_COOLDOWN
    step_up: int = DEFAULT_STEP_UP  # most workers added at once (or the current count)
    #: the most tasks the pool's queues let run at once (every one of them declares a
    #: ``max_concurrent``: their sum), None: unbounded. Workers past what it fills sit idle
    #: however late the work is, so the autoscaler never starts them.
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.minimum <= self.maximum and self.maximum >= 1):
            raise ValueError(
                f"replicas [{self.minimum}, {self.maximum}]: need 0 <= min <= max and max >= 1"
            )
        if self.concurrency < 1 or self.step_up < 1:
            raise ValueError(
                f"concurrency {self.concurrency} and step_up {self.step_up} must be >= 1"
            )
        if not (math.isfinite(self.target_latency) and self.target_latency > 0):
            raise ValueError(f"target_latency {self.target_latency!r} must be seconds > 0")
        if not (math.isfinite(self.cooldown) and self.cooldown >= 0):
            raise ValueError(f"cooldown {self.cooldown!r} must be seconds >= 0")

    @classmethod
    def for_pool(
        cls, pool: Pool, concurrency: int | None = None, caps: Iterable[int | None] = ()
    ) -> ScalePolicy:
        """A topology pool's bounds and targets; ``concurrency`` (``-c``) overrides its own;
        ``caps``: the ``max_concurrent`` of each queue the pool serves (None: none)."""
        return cls(
            minimum=pool.replicas[0],
            maximum=pool.replicas[1],
            concurrency=concurrency or pool.concurrency or DEFAULT_CONCURRENCY,
            target_latency=pool.target_latency,
            cooldown=pool.cooldown,
            max_in_flight=in_flight_cap(caps),
        )

    @property
    def useful_maximum(self) -> int:
        """The most workers that can all have work: the replicas maximum, or fewer when the
        queues' ``max_concurrent`` fill fewer (never below the minimum)."""
        if self.max_in_flight is None:
            return self.maximum
        useful = max(1, math.ceil(self.max_in_flight / self.concurrency))
        return max(self.minimum, min(self.maximum, useful))


def in_flight_cap(caps: Iterable[int | None]) -> int | None:
    """The sum of the queues' ``max_concurrent`` when every queue has one, else None."""
    total = 0
    seen = False
    for cap in caps:
        if cap is None:
            return None
        total += cap
        seen = True
    return total if seen else None


@dataclass(frozen=True, slots=True)
class Signals:
    """What the broker says about a queue or a pool's queues at one moment.

    ``in_flight`` is the tasks leased to workers; ``oldest_ready_age`` is how long the
    oldest claimable task has waited, None when none waits."""

    ready: int = 0
    in_flight: int = 0
    oldest_ready_age: float | None = None

    @property
    def waiting(self) -> bool:
        """Whether any task waits for a worker now."""
        return self.ready > 0 or self.oldest_ready_age is not None


def queue_signals(ready: int, leased: int, oldest_ready_at: float | None, now: float) -> Signals:
    """A queue's signals from its broker counts (``oldest_ready_at`` and ``now`` on the
    broker's clock, so a skewed local clock changes nothing)."""
    age = None if oldest_ready_at is None else max(0.0, now - oldest_ready_at)
    return Signals(ready=ready, in_flight=leased, oldest_ready_age=age)


def pool_signals(queues: Iterable[Signals]) -> Signals:
    """A pool's signals: its queues' counts summed, the oldest wait of any of them."""
    ready = in_flight = 0
    ages: list[float] = []
    for s in queues:
        ready += s.ready
        in_flight += s.in_flight
        if s.oldest_ready_age is not None:
            ages.append(s.oldest_ready_age)
    return Signals(ready, in_flight, max(ages) if ages else None)


def workers_needed(signals: Signals, policy: ScalePolicy) -> int:
    """Workers that would hold every task in flight and ready at once, within [min, max]:
    the stateless answer an outside autoscaler can target (the ``desired`` gauge)."""
    raw = math.ceil((signals.in_flight + signals.ready) / policy.concurrency)
    return min(policy.useful_maximum, max(policy.minimum, raw))


@dataclass(frozen=True, slots=True)
class ScaleState:
    """What a pool's decisions remember between two calls (the hysteresis): since when
    its capacity has been spare without a break, and when its worker count last changed
    (monotonic seconds; None: never)."""

    spare_since: float | None = None
    changed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """From ``workers`` to ``target`` worker processes because of ``reason``; ``state`` is
    to pass to the next call."""

    workers: int
    target: int
    reason: str
    state: ScaleState

    @property
    def change(self) -> int:
        return self.target - self.workers


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 100 else f"{seconds:.0f}s"


def decide(
    policy: ScalePolicy,
    signals: Signals,
    workers: int,
    now: float,
    state: ScaleState = ScaleState(),
    starting: int = 0,
) -> Decision:
    """The worker count ``policy``'s pool should have now (see the module docstring).

    ``workers`` counts the pool's workers that are not draining, ``starting`` of them
    those not up yet; ``now`` is monotonic seconds, the clock of ``state``."""
    lo, hi, conc = policy.minimum, policy.maximum, policy.concurrency
    changed = ScaleState(spare_since=None, changed_at=now)
    if workers < lo:
        return Decision(workers, lo, f"below the minimum of {lo}", changed)
    if workers > hi:
        return Decision(workers, hi, f"above the maximum of {hi}", changed)
    slots = workers * conc
    work = f"{signals.ready} ready, {signals.in_flight} in flight for {slots} slot(s)"
    if hi > policy.useful_maximum and workers <= policy.useful_maximum:
        hi = policy.useful_maximum  # more would sit idle: the queues' max_concurrent
    age = signals.oldest_ready_age
    late = age is not None and age > policy.target_latency
    busy = signals.in_flight >= slots
    demand = math.ceil((signals.in_flight + signals.ready) / conc)
    if signals.waiting and (workers == 0 or late or busy):
        if workers == 0:
            why = "work arrived and the pool has no worker"
        elif late:
            assert age is not None
            why = f"oldest ready task waited {_fmt(age)} > target {_fmt(policy.target_latency)}"
        else:
            why = "every slot is busy and work waits"
        floor = workers if starting and workers else workers + 1
        target = min(hi, workers + max(policy.step_up, workers), max(floor, demand))
        if target > workers:
            return Decision(workers, target, f"{why} ({work})", changed)
        held = replace(state, spare_since=None)
        if workers == hi:
            if hi < policy.maximum:
                why += f", but {hi} worker(s) fill the queues' max_concurrent"
                return Decision(workers, workers, f"{why} ({policy.max_in_flight})", held)
            return Decision(workers, workers, f"{why}, but at the maximum of {hi}", held)
        return Decision(workers, workers, f"{why}; {starting} worker(s) still starting", held)
    spare = (
        workers > lo
        and (age is None or age <= policy.target_latency / 2)
        and signals.in_flight + signals.ready <= (workers - 1) * conc
    )
    if not spare:
        return Decision(workers, workers, f"steady ({work})", replace(state, spare_since=None))
    since = now if state.spare_since is None else state.spare_since
    kept = replace(state, spare_since=since)
    quiet = now - since >= policy.cooldown
    settled = state.changed_at is None or now - state.changed_at >= policy.cooldown
    if not (quiet and settled):
        return Decision(workers, workers, f"spare capacity for {_fmt(now - since)} ({work})", kept)
    target = max(lo, demand, workers - max(1, workers // 2))
    reason = f"spare capacity for {_fmt(now - since)} >= cooldown {_fmt(policy.cooldown)} ({work})"
    return Decision(workers, target, reason, ScaleState(spare_since=now, changed_at=now))
