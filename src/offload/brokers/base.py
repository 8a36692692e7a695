"""The broker protocol: storage and transport for tasks, and nothing else.

A broker stores opaque payload bytes with a little metadata, and makes every state change
atomic on its own clock. Policy *math* (backoff, when to give up) lives in
:mod:`offload.core.policy`; brokers only enforce what must be enforced globally and
atomically at claim time: pause, the token bucket and ``max_concurrent``.

Task life cycle, identical on every broker::

    enqueue ──► READY (eta in the future: "scheduled") ──claim──► LEASED
                  ▲                                                │
                  ├──────── retry(delay) / release / lease expiry ◄┤
                  │                                                ├──ack──► gone (name kept
                  └──────────── requeue_dead ◄── DEAD ◄─dead_letter┘         for dedup_window)

A broker instance is opened on one event loop and used from that loop only. Brokers whose
coroutines never suspend (``Capabilities.inline``, SQLite) may also be driven without a loop
by the App's synchronous facade.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..core.policy import QueuePolicy
from .checks import (
    MAX_DEAD_LETTERS,
    MAX_RESULT_TTL,
    check_dead_letters_limit,
    check_list_tasks_limit,
    check_release_delay,
    check_result,
)

__all__ = [
    "MAX_DEAD_LETTERS",
    "MAX_RESULT_TTL",
    "BlockingClaim",
    "BlockingEnqueue",
    "Broker",
    "Capabilities",
    "Claimed",
    "DeadLetter",
    "EnforcedPolicy",
    "HandoffReceiver",
    "Lease",
    "NewTask",
    "QueueStats",
    "ResultStore",
    "TaskInspection",
    "TaskMetrics",
    "TaskRecord",
    "TransactionalEnqueue",
    "check_dead_letters_limit",
    "check_list_tasks_limit",
    "check_release_delay",
    "check_result",
]


#: the most dead letters one ``dead_letters()`` call returns
@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker can do. A feature a broker lacks is refused loudly, never ignored."""

    #: coroutines never suspend, so a synchronous caller may drive them without a loop
    inline: bool = False
    #: ``enqueue(..., connection=conn)`` joins the caller's own database transaction
    transactional_enqueue: bool = False
    #: results of calls are stored under a key with a TTL and callers are woken by the
    #: broker on a reply channel (:class:`ResultStore`)
    results: bool = False
    #: one broker spans several servers (Redis Cluster)
    cluster: bool = False
    #: an enqueue may lease a task straight to a worker blocked in :meth:`Broker.wait`; the
    #: broker passes it to its ``on_handoff`` callback, if one is set and takes it, during
    #: that wait, or else returns it from the next :meth:`Broker.claim`
    handoff: bool = False
    #: tasks can be looked at and changed one by one: get, list, run now, and whole queues
    #: dropped (:class:`TaskInspection`)
    inspect: bool = False


@dataclass(slots=True)
class NewTask:
    """A task to enqueue. ``eta`` is absolute epoch seconds; ``delay`` is relative to the
    broker's clock at enqueue. Both zero/None: ready now."""

    id: str
    queue: str
    payload: bytes
    name: str | None = None
    eta: float | None = None
    delay: float = 0.0


@dataclass(slots=True)
class Lease:
    """Proof of a claim: only the holder of the current token can ack, retry or bury."""

    queue: str
    id: str
    token: str


@dataclass(slots=True)
class Claimed:
    """A claimed task. ``attempt`` counts this one (1 on the first run) and includes runs
    whose worker died; ``first_attempt_at`` and ``now`` are broker-clock epoch seconds."""

    id: str
    queue: str
    name: str | None
    payload: bytes
    attempt: int
    first_attempt_at: float
    enqueued_at: float
    now: float
    token: str
    #: when this claim's lease ends, broker clock (``lease_until - now`` is the lease length
    #: the broker applied: the queue's stored lease, which may differ from a worker's copy)
    lease_until: float = 0.0
    #: True when this claim takes over a lease that expired: the previous attempt ended
    #: without a verdict (its worker died, hung, or lost the lease). False after an enqueue,
    #: a retry, a release or a requeue. The worker's give-up decision at claim time
    #: (:func:`offload.core.policy.give_up_at_claim`) applies only to such claims; a retry
    #: the policy scheduled always runs.
    expired: bool = False

    @property
    def lease(self) -> Lease:
        return Lease(self.queue, self.id, self.token)


@dataclass(frozen=True, slots=True)
class EnforcedPolicy:
    """The part of a queue's policy the broker stores and enforces, as it stands in the
    broker (the last declaration wins), so a worker or the CLI can tell when its own
    declaration differs. ``rate`` is tasks per second, ``bucket`` the bucket's capacity."""

    rate: float | None = None
    bucket: float | None = None
    max_concurrent: int | None = None
    lease: float = 60.0
    dedup_window: float = 3600.0


@dataclass(slots=True)
class QueueStats:
    queue: str
    ready: int = 0
    scheduled: int = 0
    leased: int = 0
    dead: int = 0
    paused: bool = False
    #: what the broker enforces for this queue; None when the queue was never declared
    policy: EnforcedPolicy | None = None
    #: broker-clock time since which the oldest claimable task (ready and due, or with an
    #: expired lease) has been claimable; None when none is (its age: ``now() - this``)
    oldest_ready_at: float | None = None


@dataclass(slots=True)
class DeadLetter:
    id: str
    queue: str
    name: str | None
    payload: bytes
    attempts: int
    error: str
    traceback: str
    failed_at: float


@dataclass(slots=True)
class TaskRecord:
    """One task as the broker holds it, in any state (:meth:`TaskInspection.get_task`).

    ``state`` is what a worker would see now: "ready" (claimable now, an expired lease
    included), "scheduled" (its eta is in the future), "leased" or "dead". ``eta`` is,
    on the broker's clock: when a ready or scheduled task is (was) due, when a leased
    task's lease ends, when a dead task failed. ``error`` is the last recorded error (of a
    retry or the dead-lettering), "" when none; ``traceback`` only for dead tasks."""

    id: str
    queue: str
    name: str | None
    payload: bytes
    state: str
    eta: float
    attempts: int
    first_attempt_at: float | None
    enqueued_at: float
    error: str = ""
    traceback: str = ""


@dataclass(slots=True)
class TaskMetrics:
    """Aggregates for one task function, summed across workers by ``record``.

    ``extra``: more numbers by name, summed (``*_max`` ones keep the largest): counts
    such as ``expired``, and wall, CPU and peak RSS histograms as ``h.<measure>.<bucket>``
    (:mod:`offload.profile`). ``recent``: runs per Unix minute (``int(epoch // 60)``);
    given to ``record``, its slots are added as they are; left empty, all ``count`` runs
    fall in the broker's current minute. ``metrics()`` returns the slots :meth:`keeps`
    (the last :attr:`RETAIN_MINUTES` by the broker's clock); brokers drop the others, so
    storage stays bounded."""

    #: minutes of run counts kept: twice the hour a rate is read over (offload.profile)
    RETAIN_MINUTES: ClassVar[int] = 120

    task: str
    count: int = 0
    failures: int = 0
    wall_total: float = 0.0
    wall_max: float = 0.0
    cpu_total: float = 0.0
    cpu_max: float = 0.0
    mem_peak_max: int = 0  # bytes; 0 when not measured
    extra: dict[str, float] = field(default_factory=dict)
    recent: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_row(
        cls, row: Sequence, extra: dict[str, float], minute: int | None = None
    ) -> TaskMetrics:
        """From a stored row in field order (task, count, failures, wall_total, wall_max,
        cpu_total, cpu_max, mem_peak_max), the SQL brokers' column order. Given the
        broker's ``minute``, ``extra``'s ``m.<minute>`` keys (the SQL brokers' run counts)
        move to ``recent``, those it no longer :meth:`keeps` left out."""
        recent: dict[int, int] = {}
        if minute is not None:
            plain: dict[str, float] = {}
            for k, v in extra.items():
                if not k.startswith("m."):
                    plain[k] = v
                elif cls.keeps(int(k[2:]), minute):
                    recent[int(k[2:])] = int(v)
            extra = plain
        return cls(*row[:8], extra=extra, recent=recent)

    @classmethod
    def keeps(cls, slot: int, minute: int) -> bool:
        """Whether a broker whose clock reads ``minute`` keeps the run count of ``slot``."""
        return minute - cls.RETAIN_MINUTES <= slot <= minute + 1


@runtime_checkable
class Broker(Protocol):
    """The small interface every broker implements (see the module docstring).

    Every method is atomic on the broker. Errors are offload's, never a driver's:
    :class:`offload.errors.BrokerUnavailable` when the server cannot be reached or cannot
    take more (:class:`offload.errors.BrokerFull`): nothing happened, and the same call may
    succeed later; :class:`offload.errors.BrokerRefused` when the server rejected this
    request itself (bad data, a constraint): nothing happened, and sending the same request
    again fails the same way. Bad arguments raise :class:`offload.errors.ConfigError` before
    any I/O, the same on every broker.
    """

    url: str
    capabilities: Capabilities

    async def open(self) -> None:
        """Connect, and create or migrate the schema. Idempotent."""

    async def close(self) -> None:
        """Release connections. Leased tasks stay leased until acked or expired."""

    async def declare(self, policies: Sequence[QueuePolicy]) -> None:
        """Create or update queues with these policies (the last writer wins)."""

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store tasks durably before returning. Per task: True when created, False when
        its ``name`` already exists in the queue or finished within its dedup window (the
        others of the batch are still created).

        Idempotent by id: a task whose ``id`` exists already (in any state) is left as it
        is and reported True, so a sender that retries a send whose reply it lost creates
        nothing twice. (An id whose task already finished is not remembered: it would be
        created again; names are the de-duplication that outlives a task.)

        Brokers with ``Capabilities.transactional_enqueue`` also take ``connection=``, the
        application's own database connection, and then enqueue inside its transaction
        without committing. Any broker may add a synchronous
        ``enqueue_blocking(tasks, *, connection=None) -> list[bool]`` running the same
        script or SQL with a synchronous client; the App's sync facade prefers it, so a
        web request pays one round trip and no thread hop."""

    async def claim(self, queues: Sequence[str], limit: int) -> list[Claimed]:
        """Lease up to ``limit`` due tasks from ``queues``, honouring pause, rate and
        max_concurrent, oldest eta first. Expired leases are claimable again."""

    async def ack(self, leases: Sequence[Lease]) -> None:
        """Remove finished tasks. A finished run wins: an ack removes its task whatever
        the task's state and token (a late ack from a worker that lost the lease, after
        another worker re-claimed the task or dead-lettered it as "worker died", still
        removes it; the name stays reserved for the dedup window). Unknown ids are
        ignored."""

    async def retry(self, lease: Lease, delay: float, error: str) -> bool:
        """Make the task ready again after ``delay`` seconds, recording ``error``. This
        attempt counts. False when the lease was lost."""

    async def release(self, leases: Sequence[Lease], delay: float = 0.0) -> None:
        """Give tasks back without counting the attempt (drain, shutdown, a task this
        worker must not run), claimable again after ``delay`` seconds. A stale token is
        ignored."""

    async def dead_letter(self, lease: Lease, error: str, traceback: str) -> bool:
        """Move a task to the queue's dead letters. False when the lease was lost."""

    async def extend(self, leases: Sequence[Lease]) -> list[float | None]:
        """Renew leases by each queue's lease duration as the broker stores it now. Per
        lease: that duration in seconds (the holder times its next heartbeat from it, not
        from its own copy of the policy, which a later deploy may have changed), or None
        when the lease is no longer held."""

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a task of ``queues`` may have become claimable, or after ``timeout``
        seconds, without busy polling. Returning early is allowed, never required."""

    async def stats(self, queue: str) -> QueueStats:
        """Counts by state, pause, and the policy the broker enforces (``policy``)."""

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest first, at most ``limit`` (an int from 0 to 10,000; anything else raises
        :class:`offload.errors.ConfigError`)."""

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Make dead tasks ready again with fresh attempt counters (all when ``ids`` is
        None); returns how many."""

    async def set_paused(self, queue: str, paused: bool) -> None: ...

    async def purge(self, queue: str) -> int:
        """Delete every ready and scheduled task (leased ones finish); returns how many."""

    async def delete(self, queue: str, *, id: str | None = None, name: str | None = None) -> bool:
        """Delete one task in any state; a deleted named task keeps its name for the
        dedup window. False when no such task."""

    async def record(self, metrics: Sequence[TaskMetrics]) -> None:
        """Add per-task-function measurements to the stored aggregates."""

    async def metrics(self) -> list[TaskMetrics]: ...

    async def now(self) -> float:
        """The broker's clock, epoch seconds."""


# -- optional capabilities: a broker implements one of these and says so in Capabilities ----


@runtime_checkable
class BlockingEnqueue(Protocol):
    """A synchronous enqueue running the same script or SQL with a synchronous client; the
    App's sync facade prefers it, so a web request pays one round trip and no thread hop.
    Thread-safe. Same results and errors as :meth:`Broker.enqueue`."""

    def enqueue_blocking(
        self, tasks: Sequence[NewTask], *, connection: Any = None
    ) -> list[bool]: ...


@runtime_checkable
class BlockingClaim(Protocol):
    """A synchronous claim, made from a worker's handler thread: while a backlog of
    plain-function tasks waits, the threads that run them claim the next ones themselves,
    with no event-loop turn per task (:mod:`offload.worker.lanes`). Thread-safe. The same
    leases as :meth:`Broker.claim` and the same errors; it never parks or waits, and it may
    return fewer than could be claimed across several queues (the worker's loop then
    claims with its full logic)."""

    def claim_blocking(
        self, queues: Sequence[str], limit: int, acks: Sequence[Lease] = ()
    ) -> list[Claimed]:
        """Ack ``acks`` (as :meth:`Broker.ack`), then claim up to ``limit``, in one
        round trip where the broker can."""


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """``Capabilities.transactional_enqueue``: the enqueue joins the application's own
    database transaction (``connection``) and commits with it, or not at all."""

    async def enqueue(self, tasks: Sequence[NewTask], *, connection: Any = None) -> list[bool]: ...


@runtime_checkable
class HandoffReceiver(Protocol):
    """``Capabilities.handoff``: while a worker waits in :meth:`Broker.wait`, an enqueue
    may lease a task straight to it. The broker calls ``on_handoff`` (set by the worker)
    with those claims during the wait. True: the worker started them (and heartbeats them
    from now on). False: the worker cannot take them now, and the broker releases them at
    once, uncounted, for any worker to claim. Unset (None): the broker returns them from
    the next :meth:`Broker.claim`."""

    on_handoff: Callable[[list[Claimed]], bool] | None


@runtime_checkable
class TaskInspection(Protocol):
    """``Capabilities.inspect``: tasks looked at and changed one at a time, for the HTTP
    API, the dashboard and the Cloud Tasks surface. None of these runs on the hot path.

    ``list_tasks`` pages through a queue's tasks (every state) in any order, as Cloud
    Tasks' ListTasks does: over a full iteration while the queue does not change, each task
    comes back once. ``drop_queue`` forgets a queue: its tasks in every state (a leased
    task's worker finds its lease lost: its ack is ignored, its retry returns False), its
    dead letters, its names and its stored policy and pause; it returns how many tasks it
    deleted. Dropping never waits for leases, so a queue being dropped while workers serve
    it cannot block forever."""

    async def get_task(self, queue: str, id: str) -> TaskRecord | None:
        """The task ``id`` of ``queue`` in any state; None when there is none."""

    async def list_tasks(
        self, queue: str, *, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """Up to ``limit`` tasks (0 to 10,000, else ConfigError) in any order, from where
        the page token ``after`` points (None: the start; then
        :func:`~offload.brokers.pages.next_page_after` of the page before, until None)."""

    async def run_task(self, queue: str, id: str) -> bool:
        """Make a ready or scheduled task due now (a leased or dead one is left alone);
        True when the task is ready now."""

    async def drop_queue(self, queue: str) -> int:
        """Delete the queue's tasks, dead letters, names and stored policy; how many tasks
        went."""


@runtime_checkable
class ResultStore(Protocol):
    """``Capabilities.results``: what calls need of a broker. A result is opaque bytes
    stored under a key (the task's id) for ``ttl`` seconds and then gone, so results never
    grow without bound. A caller process listens on one *reply channel* of its own; storing
    a result with ``reply_to`` wakes that process's :meth:`wait_results` through the broker
    (Redis: a blocking pop on the channel's list; PostgreSQL: NOTIFY; SQLite: the
    doorbell), never by polling, so one listener serves any number of concurrent calls."""

    async def put_result(
        self, key: str, value: bytes, ttl: float, reply_to: str | None = None
    ) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (replacing an earlier one)
        and, with ``reply_to``, deliver ``(key, value)`` to that channel's listener.
        Durable when it returns, like an enqueue."""

    async def get_result(self, key: str) -> bytes | None:
        """The value stored under ``key``; None when there is none or it expired."""

    async def wait_results(self, reply_to: str, timeout: float) -> list[tuple[str, bytes]]:
        """Results delivered to ``reply_to``, each once, oldest first; blocks until at
        least one arrives or ``timeout`` seconds passed (then []). The first call starts
        listening; results stored before it may be missed, so a caller makes one call
        (``timeout=0``) before it sends anything whose result it waits for."""
