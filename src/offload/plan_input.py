"""Reading ``offload profile --json`` (or ``app.profile()``) into the task rows the cost
planner needs, refusing a profile too thin to plan from with a line naming what is
missing. Pure: the parsed JSON in, checked rows out."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .planner import PlanError

__all__ = ["TaskProfile", "parse_profile"]

_TASK_FIELDS = (
    "task", "service", "queue", "runs", "failures", "rate", "wall_p50", "wall_p90",
    "cpu_p50", "cpu_p90", "rss_peak_p50", "rss_peak_p90", "rss_peak_max",
)  # fmt: skip
_NEEDED = ("rate", "wall_p90", "cpu_p90", "rss_peak_p90", "rss_peak_max")


@dataclass(frozen=True, slots=True)
class TaskProfile:
    """One task function's measured row from ``offload profile --json``."""

    task: str
    service: str
    queue: str
    runs: int
    rate: float  # runs per second over the last hour
    wall_p90: float  # seconds
    cpu_p90: float  # CPU seconds
    rss_peak_p90: int  # bytes
    rss_peak_max: int


def _number(row: Mapping[str, Any], key: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanError(
            f"{where}: {key} is {value!r}; the planner needs a finite number here "
            "(profile the app for longer, or fix the file)"
        )
    if value < 0:
        raise PlanError(f"{where}: {key}={value!r} is negative; a measurement is >= 0")
    return float(value)


def parse_profile(data: Any) -> tuple[list[TaskProfile], dict[str, str]]:
    """The task rows with runs, checked, and each service's executor (from the service
    rows), out of ``offload profile --json``'s ``{"tasks": [...], "services": [...]}``.

    Raises PlanError naming what is missing: no rows, no runs at all, a task with runs but
    no rate (measured for less than it takes to see one arrival) or no percentiles.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("tasks"), list):
        raise PlanError(
            'the profile must be a JSON object {"tasks": [...], "services": [...]} as '
            "offload profile --json writes it"
        )
    executors: dict[str, str] = {}
    for i, row in enumerate(data.get("services") or []):
        if not isinstance(row, Mapping) or not isinstance(row.get("service"), str):
            raise PlanError(f"profile services[{i}]: needs a 'service' name")
        executors[row["service"]] = str(row.get("executor") or "thread")
    tasks: list[TaskProfile] = []
    for i, row in enumerate(data["tasks"]):
        if not isinstance(row, Mapping):
            raise PlanError(f"profile tasks[{i}]: must be an object with {', '.join(_TASK_FIELDS)}")
        for key in ("task", "service", "queue"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise PlanError(f"profile tasks[{i}]: {key} is missing; every row names it")
        where = f"profile task {row['task']!r} (service {row['service']!r})"
        runs = int(_number(row, "runs", where))
        if runs == 0:
            continue  # declared, never run: the service may still be sized by others
        values = {key: _number(row, key, where) for key in _NEEDED}
        if values["rate"] <= 0:
            raise PlanError(
                f"{where}: {runs} run(s) but no rate (runs per second over the last hour); "
                "profile it under real traffic for longer, then plan again"
            )
        tasks.append(
            TaskProfile(
                task=row["task"],
                service=row["service"],
                queue=row["queue"],
                runs=runs,
                rate=values["rate"],
                wall_p90=values["wall_p90"],
                cpu_p90=values["cpu_p90"],
                rss_peak_p90=int(values["rss_peak_p90"]),
                rss_peak_max=int(max(values["rss_peak_max"], values["rss_peak_p90"])),
            )
        )
    if not tasks:
        raise PlanError(
            "the profile holds no runs: nothing to plan from; run the app's workers under "
            "real traffic (they record every run), then offload profile APP --json"
        )
    return tasks, executors
