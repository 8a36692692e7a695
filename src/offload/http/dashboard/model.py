"""What the dashboard's pages show, read from the App in one synchronous pass.

Each page asks for one snapshot (run off the event loop by ``HttpContext.call``), so a
page never mixes counts read at different refreshes. Ages are measured on the broker's
clock (``Broker.now``), the same clock that stamps ``oldest_ready_at``, so a server whose
clock drifts from the broker's still shows true ages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from ...app import App, DeadLetterInfo
    from ...brokers.base import Broker, QueueStats, TaskInspection, TaskMetrics

__all__ = [
    "QueueRow",
    "TaskRow",
    "dead_letters_page",
    "delete_dead_letter",
    "format_age",
    "format_rate",
    "overview",
]

#: the most dead letters one page lists (the rest are reachable by requeueing or deleting)
DEAD_LETTERS_SHOWN = 200


@dataclass(frozen=True, slots=True)
class QueueRow:
    """One queue as the overview shows it: counts, state and the enforced policy."""

    name: str
    ready: int
    scheduled: int
    leased: int
    dead: int
    paused: bool
    #: seconds the oldest claimable task has waited; None when none waits
    oldest_ready_age: float | None
    rate: str
    concurrency: str
    #: fields where this App's declaration differs from what the broker enforces
    drift: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TaskRow:
    """The measured profile of one task function, summed across workers."""

    task: str
    queue: str
    count: int
    failures: int
    wall_mean: float | None
    wall_max: float
    cpu_mean: float | None
    cpu_max: float
    mem_peak: int


def format_rate(rate: float | None, bucket: float | None = None) -> str:
    """A token-bucket rate as people write it: "20/s", "1.5/m", "unlimited"."""
    if rate is None:
        return "unlimited"
    for unit, per in (("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        n = rate * per
        if n >= 1 or unit == "h":
            text = f"{n:.3g}/{unit}"
            break
    if bucket is not None and bucket != max(1, math.ceil(rate)):
        text += f" (burst {bucket:g})"
    return text


def format_age(seconds: float | None) -> str:
    """An age in the largest unit that keeps it short: "0.4 s", "12 s", "3 min", "2.5 h"."""
    if seconds is None:
        return "\u2014"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _queue_row(app: App, name: str, stats: QueueStats, now: float) -> QueueRow:
    declared = app.policy(name)
    enforced = stats.policy
    rate = enforced.rate if enforced is not None else declared.rate
    bucket = enforced.bucket if enforced is not None else declared.bucket
    limit = enforced.max_concurrent if enforced is not None else declared.max_concurrent
    oldest = stats.oldest_ready_at
    return QueueRow(
        name=name,
        ready=stats.ready,
        scheduled=stats.scheduled,
        leased=stats.leased,
        dead=stats.dead,
        paused=stats.paused,
        oldest_ready_age=None if oldest is None else max(0.0, now - oldest),
        rate=format_rate(rate, bucket),
        concurrency="unlimited" if limit is None else str(limit),
        drift=tuple(sorted(app.policy_drift(name, enforced))),
    )


def _task_row(app: App, m: TaskMetrics) -> TaskRow:
    tf = app.tasks.get(m.task)
    return TaskRow(
        task=m.task,
        queue=tf.queue if tf is not None else "",
        count=m.count,
        failures=m.failures,
        wall_mean=m.wall_total / m.count if m.count else None,
        wall_max=m.wall_max,
        cpu_mean=m.cpu_total / m.count if m.count else None,
        cpu_max=m.cpu_max,
        mem_peak=m.mem_peak_max,
    )


def broker_now(app: App) -> float:
    """The broker's clock, which stamps every eta and ``oldest_ready_at``."""
    return app.registry.call(lambda b: b.now())


def overview(app: App) -> dict[str, Any]:
    """Every declared queue's row and every measured task function's profile."""
    stats = {name: app.stats(name) for name in sorted(app.queues)}
    now = broker_now(app)
    return {
        "queues": [_queue_row(app, name, s, now) for name, s in stats.items()],
        "tasks": sorted((_task_row(app, m) for m in app.metrics()), key=lambda r: r.task),
    }


def dead_letters_page(app: App, queue: str) -> dict[str, Any]:
    """One queue's row and its oldest dead letters (at most :data:`DEAD_LETTERS_SHOWN`)."""
    stats = app.stats(queue)
    now = broker_now(app)
    letters: list[DeadLetterInfo] = app.dead_letters(queue, limit=DEAD_LETTERS_SHOWN)
    return {
        "queue": _queue_row(app, queue, stats, now),
        "letters": letters,
        "shown": len(letters),
        "now": now,
    }


def delete_dead_letter(app: App, queue: str, id: str) -> bool:
    """Delete task ``id`` only while it is a dead letter, so a click on a page drawn before
    the task was requeued cannot delete it while it waits or runs again. A broker without
    task inspection (``Capabilities.inspect``) cannot tell, and deletes the task as
    :meth:`App.delete_task` would. False when nothing was deleted."""
    app.policy(queue)

    async def op(b: Broker) -> bool:
        if b.capabilities.inspect:
            record = await cast("TaskInspection", b).get_task(queue, id)
            if record is None or record.state != "dead":
                return False
        return await b.delete(queue, id=id)

    return app.registry.call(op)
