"""Periodic tasks: ``@app.periodic("*/5 * * * *", queue="reports", tz="UTC")``.

A schedule is a cron expression (five fields, or six with seconds last, as croniter reads
them) in a time zone, on a task function that needs no arguments. There is no separate
scheduler process: every running worker whose queues include the task's queue keeps the
schedule (:mod:`offload.worker.periodic`), and each slot is enqueued as a task *named*
after the slot, so the broker's named-task de-duplication lets exactly one of them through
however many workers try. Each worker also records the last slot fired in the broker (a
stored result under ``periodic:<app>:<task>``, kept a day), so after downtime only the
most recent missed slot fires, once, and a schedule that never fired before starts at its
next slot rather than replaying the past.

croniter is an optional dependency (the ``cron`` extra), imported only when a schedule is
declared: ``pip install 'offload[cron]'``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .registry import Registry
    from .task import TaskFunction

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["Schedule", "Scheduling", "marker_key", "schedule_rows", "slot_name"]

_INSTALL_HINT = (
    "periodic tasks read cron expressions with croniter, which is not installed; "
    "install it with pip install 'offload[cron]' (or pip install croniter)"
)


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    return croniter


def _zone(tz: str | _dt.tzinfo) -> _dt.tzinfo:
    if isinstance(tz, _dt.tzinfo):
        return tz
    if tz in ("UTC", "utc", "Z"):
        return _dt.UTC
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(tz)
    except Exception:
        raise ConfigError(
            f"tz={tz!r}: not a time zone this machine knows; give an IANA name such as "
            "'UTC' or 'Europe/Paris' (pip install tzdata where the system has no zone files)"
        ) from None


@dataclass(frozen=True, slots=True)
class Schedule:
    """One task function's schedule: ``cron`` in ``tz``, enqueued on ``queue``."""

    task: str
    cron: str
    queue: str
    tz: str = "UTC"

    @classmethod
    def of(cls, task: str, cron: str, queue: str, tz: str | _dt.tzinfo = "UTC") -> Schedule:
        """A checked schedule: raises :class:`ConfigError` saying what is wrong with a
        cron string that does not parse or a time zone that does not exist."""
        if not isinstance(cron, str) or not cron.strip():
            raise ConfigError(f"@app.periodic({cron!r}): give a cron string like '*/5 * * * *'")
        croniter = _croniter()
        zone = _zone(tz)
        if not croniter.is_valid(cron):
            raise ConfigError(
                f"@app.periodic({cron!r}): not a cron expression; use five fields "
                "(minute hour day-of-month month day-of-week, e.g. '*/5 * * * *') or six "
                "with seconds last ('* * * * * */10')"
            )
        sched = cls(task, cron.strip(), queue, getattr(zone, "key", None) or str(tz))
        sched.next_after(0.0)  # croniter accepts some strings it cannot iterate
        return sched

    def _iter(self, at: float) -> Any:
        start = _dt.datetime.fromtimestamp(at, _zone(self.tz))
        try:
            return _croniter()(self.cron, start)
        except Exception as exc:
            raise ConfigError(f"@app.periodic({self.cron!r}) on {self.task}: {exc}") from None

    def next_after(self, at: float) -> float:
        """The first slot strictly after ``at`` (epoch seconds)."""
        return float(self._iter(at).get_next(float))

    def latest(self, at: float) -> float:
        """The last slot at or before ``at`` (epoch seconds)."""
        it = self._iter(at)
        nxt = it.get_next(float)
        if nxt <= at + 1e-6:  # croniter's "next" from exactly a slot is the next one
            return float(nxt)
        return float(self._iter(at + 1e-6).get_prev(float))


def check_no_arguments(cron: str, fn: Callable[..., Any]) -> None:
    """A periodic task is called with no arguments: refuse one that needs some."""
    try:
        inspect.signature(fn).bind()
    except TypeError as exc:
        raise ConfigError(
            f"@app.periodic({cron!r}): {getattr(fn, '__qualname__', fn)!r} must be callable "
            f"without arguments (give every parameter a default): {exc}"
        ) from None
    except ValueError:
        pass


def slot_name(task: str, slot: float) -> str:
    """The task name of one slot: the broker lets one task of this name through."""
    stamp = _dt.datetime.fromtimestamp(slot, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"periodic:{task}@{stamp}Z"[:500]


def marker_key(app: str, task: str) -> str:
    """Where the last slot fired is recorded (a stored result, msgpack float)."""
    return f"periodic:{app}:{task}"[:500]


def schedule_rows(app: Any) -> list[dict[str, Any]]:
    """One row per schedule: task, cron, tz, queue, next and last firing (epoch s)."""
    import msgspec

    from .brokers.base import ResultStore

    schedules = sorted(app.registry.schedules.values(), key=lambda s: s.task)
    if not schedules:
        return []

    async def read(broker: Any) -> tuple[float, list[bytes | None]]:
        now = await broker.now()
        if not isinstance(broker, ResultStore) or not broker.capabilities.results:
            return now, [None] * len(schedules)
        return now, [await broker.get_result(marker_key(app.name, s.task)) for s in schedules]

    now, marks = app.registry.call(read, declare=False)
    rows = []
    for s, raw in zip(schedules, marks, strict=True):
        last = None if raw is None else float(msgspec.msgpack.decode(raw))
        rows.append(
            {
                "task": s.task,
                "cron": s.cron,
                "tz": s.tz,
                "queue": s.queue,
                "next": s.next_after(now),
                "last": last,
            }
        )
    return rows


class Scheduling:
    """The schedules half of :class:`~offload.app.App` (a mixin: methods, no state)."""

    registry: Registry

    def task(self, fn: Any = None, **options: Any) -> Any:
        raise NotImplementedError  # supplied by App

    def policy(self, queue: str) -> Any:
        raise NotImplementedError  # supplied by App

    def periodic(
        self,
        cron: str,
        *,
        queue: str = "default",
        tz: str = "UTC",
        name: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], TaskFunction]:
        """Run a task function on a schedule: ``@app.periodic("*/5 * * * *",
        queue="reports", tz="UTC")`` (six fields: seconds last). Every worker serving
        ``queue`` keeps the schedule and one task is enqueued per slot across all of them;
        after downtime only the latest missed slot fires. Needs croniter (the ``cron``
        extra); a cron string that does not parse raises ConfigError here."""
        self.policy(queue)  # UnknownQueue now, not at the first slot
        schedule = Schedule.of(name or "?", cron, queue, tz)  # a bad cron or tz fails here

        def register(fn: F) -> TaskFunction:
            check_no_arguments(cron, fn)
            tf = self.task(queue=queue, name=name, timeout=timeout)(fn)
            self.registry.schedules[tf.name] = dataclasses.replace(schedule, task=tf.name)
            return tf

        return register

    def schedules(self) -> list[dict[str, Any]]:
        """Each schedule with its next firing and the last one the workers recorded
        (epoch seconds, None when it never fired): what ``offload periodic`` lists."""
        return schedule_rows(self)
