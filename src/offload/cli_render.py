"""What the ``offload`` command prints: text as text, JSON as strict JSON.

Almost everything the CLI shows was chosen by someone else: task and queue names, a task's
error and traceback, its arguments, the broker URL. So the console is built with rich's
markup, emoji codes and highlighting all off: ``[red]`` or ``[/x]`` in an error, or
``:fire:`` in a queue name, prints as written, and no print can forget to escape. Style is
given with ``style=``, never inside the text.

``--json`` output is strict JSON (RFC 8259) whatever the payload holds: a non-finite float
becomes ``null`` (as JavaScript's ``JSON.stringify`` and msgspec write it), bytes become
base64 text, dates and times ISO 8601 text, and anything else its ``repr``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "console",
    "dead_letters",
    "jsonable",
    "metrics_table",
    "queues_table",
    "redact",
    "say",
    "to_json",
]


class _LazyConsole:
    """rich is imported on first output, not at start-up: a worker process never prints a
    table, and the import would cost it ~2 MB of resident memory."""

    def __init__(self) -> None:
        self._console: Any = None

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._console is None:
            from rich.console import Console

            self._console = Console(markup=False, emoji=False, highlight=False)
        self._console.print(*args, **kwargs)


console = _LazyConsole()


def say(text: str, style: str | None = None) -> None:
    """Print one line on stdout exactly as given; a long line is not broken in two."""
    console.print(text, style=style, soft_wrap=True)


def jsonable(value: Any) -> Any:
    """``value`` made of JSON's own types only, so ``json.dumps(allow_nan=False)`` accepts it."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return repr(value)


def _key(key: Any) -> str:
    # json.dumps would write 1 as "1" but refuses bytes or tuples; every key becomes text
    plain = jsonable(key)
    return plain if isinstance(plain, str) else json.dumps(plain)


def to_json(value: Any) -> str:
    """Strict, indented JSON for ``--json``."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False)


def redact(url: str) -> str:
    """The broker URL without its password, for output that may end up in a log or a ticket."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _table(title: str, columns: Sequence[tuple[str, dict[str, Any]]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for name, options in columns:
        table.add_column(name, **options)
    return table


def queues_table(title: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per queue: counts by state, then the policy the broker enforces; a line
    below for each field where the app's own declaration differs."""
    right = {"justify": "right"}
    width = max((len(r["queue"]) for r in rows), default=5)
    cols = (
        "ready",
        "oldest s",
        "sched",
        "leased",
        "dead",
        "paused",
        "rate/s",
        "max conc",
        "lease s",
        "retries",
    )
    table = _table(
        title, [("queue", {"no_wrap": True, "min_width": width}), *((c, right) for c in cols)]
    )
    for r in rows:
        table.add_row(
            r["queue"],
            str(r["ready"]),
            "-" if r.get("oldest_ready_age") is None else f"{r['oldest_ready_age']:.1f}",
            str(r["scheduled"]),
            str(r["leased"]),
            str(r["dead"]),
            "yes" if r["paused"] else "",
            _fmt(r["rate"]),
            _fmt(r["max_concurrent"]),
            _fmt(r["lease"]),
            _fmt(r["retry_limit"]),
        )
    console.print(table)
    for r in rows:
        for field, d in sorted(r.get("differs", {}).items()):
            console.print(
                f"queue {r['queue']}: {field} is {_fmt(d['enforced'])} in the broker but "
                f"{_fmt(d['declared'])} in this app's declaration (its workers would change it)",
                style="yellow",
            )
        if not r.get("declared_in_broker", True):
            console.print(
                f"queue {r['queue']}: not declared in the broker yet (a worker declares it)",
                style="dim",
            )


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> None:
    """One row per task function, times in milliseconds."""
    cols = ("count", "failures", "expired", "wall avg ms", "wall max ms", "cpu avg ms")
    table = _table(
        "task metrics",
        [("task", {"no_wrap": True}), *((c, {"justify": "right"}) for c in cols)],
    )
    for r in rows:
        table.add_row(
            r["task"],
            str(r["count"]),
            str(r["failures"]),
            str(r.get("expired", 0)),
            *(_ms(r[k]) for k in ("wall_avg", "wall_max", "cpu_avg")),
        )
    console.print(table)


def _ms(seconds: Any) -> str:
    return f"{seconds * 1e3:.2f}" if isinstance(seconds, (int, float)) else "-"


def dead_letters(queue: str, items: Iterable[Any]) -> None:
    """A count, then per dead letter its id, task, name and attempts over its last error."""
    items = list(items)
    say(f"{len(items)} dead letter(s) in {queue}", style="bold")
    for d in items:
        label = f" name={d.name}" if d.name else ""
        say(f"{d.id}  {d.task}{label}  attempts={d.attempts}")
        say(f"    {d.error}")
