"""The SQLite broker's transaction bodies: ``f(conn, now, ...)``, run by ``Store.write`` or
``Store.read`` inside one transaction, with ``now`` the host clock read inside it.

The SQL itself is in ``sql/sqlite/queries.sql``; this module only sequences statements and
does the arithmetic (token bucket, fair share, next due time) between them.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from typing import Any

from ...core.policy import QueuePolicy
from ..base import (
    Claimed,
    DeadLetter,
    EnforcedPolicy,
    Lease,
    NewTask,
    QueueStats,
    TaskMetrics,
)
from .queries import queries

READY, LEASED, DEAD = 0, 1, 2
DEFAULTS = QueuePolicy("default")  # what an undeclared queue runs with


def json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values))


# ---- writes on the hot path -----------------------------------------------------------------


def enqueue(
    conn: sqlite3.Connection, now: float, tasks: Sequence[NewTask]
) -> tuple[list[bool], bool]:
    """Per task: created (True) or its name taken (False); and whether any row was written
    (a repeated send of existing ids writes none, so nobody needs waking). A task whose
    id exists already, or came earlier in this batch, is left as it is and reported True."""
    Q = queries()
    rows, created = [], []
    seen: set[str] = set()
    for t in tasks:
        if t.id in seen:
            created.append(True)
            continue
        if t.name is not None:
            params = {"queue": t.queue, "name": t.name, "id": t.id, "now": now}
            if conn.execute(Q.reserve_name, params).rowcount != 1:
                exists = conn.execute(Q.task_exists, (t.id,)).fetchone() is not None
                created.append(exists)
                continue
        seen.add(t.id)
        visible_at = t.eta if t.eta is not None else now + (t.delay or 0.0)
        rows.append((t.id, t.queue, t.name, t.payload, visible_at, now))
        created.append(True)
    if len(rows) == 1:
        written = conn.execute(Q.insert_task, rows[0]).rowcount
    elif rows:
        written = conn.executemany(Q.insert_task, rows).rowcount
    else:
        written = 0
    return created, written > 0


def claim(conn: sqlite3.Connection, now: float, order: list[str], limit: int) -> list[Claimed]:
    """Give each queue, in ``order``, its share of what is left of ``limit``; then let the
    queues that filled their share take what the others could not."""
    Q = queries()
    out: list[Claimed] = []
    left = limit
    hungry: list[str] = []
    for i, queue in enumerate(order):
        if left <= 0:
            break
        share = -(-left // (len(order) - i))  # ceil of an even split of what is left
        got = _claim_queue(conn, now, queue, conn.execute(Q.queue_row, (queue,)).fetchone(), share)
        out += got
        left -= len(got)
        if len(got) == share:
            hungry.append(queue)
    for queue in hungry:
        if left <= 0:
            break
        got = _claim_queue(conn, now, queue, conn.execute(Q.queue_row, (queue,)).fetchone(), left)
        out += got
        left -= len(got)
    return out


def _claim_queue(
    conn: sqlite3.Connection, now: float, queue: str, row: Any, want: int
) -> list[Claimed]:
    Q = queries()
    rate = None
    if row is None:
        lease = DEFAULTS.lease
    else:
        paused, rate, bucket, max_concurrent, lease, _, tokens, tokens_at, _ = row
        if paused:
            return []
        if rate is not None:
            tokens = _refill(now, rate, bucket, tokens, tokens_at)
            want = min(want, math.floor(tokens + 1e-9))
        if max_concurrent is not None and want > 0:
            (busy,) = conn.execute(Q.count_leased, (queue, now)).fetchone()
            want = min(want, max_concurrent - busy)
    if want <= 0:
        return []
    until = now + lease
    params = {"queue": queue, "now": now, "until": until, "limit": want}
    expired = conn.execute(Q.expired_due, (queue, now)).fetchone() is not None
    rows = conn.execute(Q.claim if expired else Q.claim_ready, params).fetchall()
    if rate is not None:
        conn.execute(Q.take_tokens, (max(0.0, tokens - len(rows)), now, queue))
    rows.sort()  # by seq, i.e. enqueue order (the batch itself was chosen by eta)
    return [
        Claimed(
            id=r[1],
            queue=queue,
            name=r[2],
            payload=r[3],
            attempt=r[4],
            first_attempt_at=r[5],
            enqueued_at=r[6],
            now=now,
            token=r[7],
            lease_until=until,
            expired=r[8] == 1,
        )
        for r in rows
    ]


def _refill(now: float, rate: float, bucket: float, tokens: Any, tokens_at: Any) -> float:
    """The token bucket's level at ``now`` (a bucket never filled before starts full)."""
    if tokens is None:
        return bucket
    elapsed = max(0.0, now - tokens_at) if tokens_at is not None else 0.0
    return min(bucket, tokens + elapsed * rate)


def ack(conn: sqlite3.Connection, now: float, leases: Sequence[Lease]) -> bool:
    """Delete the tasks, whatever their state and token (a finished run wins); True when
    one of them was in a max_concurrent queue (its waiters may claim again)."""
    Q = queries()
    gone = conn.execute(Q.ack, {"ids": json_list([x.id for x in leases])}).fetchall()
    if not gone:
        return False
    release_names(conn, now, gone)
    touched = json_list(sorted({queue for queue, _ in gone}))
    return conn.execute(Q.any_max_concurrent, (touched,)).fetchone() is not None


def release_names(conn: sqlite3.Connection, now: float, gone: Sequence[Sequence[Any]]) -> None:
    """Rows ``(queue, name, ...)`` of removed tasks: keep their names for the dedup window."""
    window = DEFAULTS.dedup_window
    named = [
        {"queue": r[0], "name": r[1], "now": now, "default_window": window}
        for r in gone
        if r[1] is not None
    ]
    if named:
        conn.executemany(queries().release_name, named)


def sweep_names(conn: sqlite3.Connection, now: float) -> None:
    """Forget up to 1000 name reservations whose dedup window has passed."""
    conn.execute(queries().names_gc, (now,))


def extend(conn: sqlite3.Connection, now: float, leases: Sequence[Lease]) -> list[float | None]:
    """Per lease: the lease length applied (the queue's stored lease), None when lost."""
    sql = queries().extend
    default = DEFAULTS.lease
    out: list[float | None] = []
    for x in leases:
        params = {"id": x.id, "token": x.token, "now": now, "default_lease": default}
        rows = conn.execute(sql, params).fetchall()
        out.append(float(rows[0][0]) if rows else None)
    return out


# ---- wait -----------------------------------------------------------------------------------


def next_due(conn: sqlite3.Connection, now: float, queues: Sequence[str]) -> float | None:
    """The earliest time at which a claim on ``queues`` may return something: the oldest
    eta or lease expiry, pushed back by a saturated max_concurrent (to the next lease
    expiry: an ack rings) or an empty token bucket (to its next token). None: nothing
    will come due without a ring."""
    sql = queries().next_due
    best: float | None = None
    for queue in queues:
        row = conn.execute(sql, {"queue": queue, "now": now}).fetchone()
        (ready_at, lease_at, expiry_at, busy, paused, rate, bucket, max_conc, tokens, t_at) = row
        if paused or (ready_at is None and lease_at is None):
            continue
        due = min(t for t in (ready_at, lease_at) if t is not None)
        if max_conc is not None and busy >= max_conc:
            due = max(due, expiry_at if expiry_at is not None else now)
        if rate is not None:
            have = _refill(now, rate, bucket, tokens, t_at)
            if have < 1.0:
                due = max(due, now + (1.0 - have) / rate)
        best = due if best is None else min(best, due)
    return best


# ---- inspection -----------------------------------------------------------------------------


def stats(conn: sqlite3.Connection, now: float, queue: str) -> QueueStats:
    rows = conn.execute(queries().stats, (now, queue)).fetchall()
    qrow = conn.execute(queries().queue_row, (queue,)).fetchone()
    s = QueueStats(queue=queue, paused=bool(qrow and qrow[0]))
    if qrow is not None and qrow[8] is not None:  # declared (not only paused)
        _, rate, bucket, max_concurrent, lease, dedup_window, *_ = qrow
        s.policy = EnforcedPolicy(rate, bucket, max_concurrent, lease, dedup_window)
    for state, due, count, oldest in rows:
        if state == DEAD:
            s.dead += count
        elif due:
            s.ready += count  # due ready tasks and expired leases alike
            if s.oldest_ready_at is None or oldest < s.oldest_ready_at:
                s.oldest_ready_at = oldest
        elif state == READY:
            s.scheduled += count
        else:
            s.leased += count
    return s


def dead_letters(conn: sqlite3.Connection, now: float, queue: str, limit: int) -> list[DeadLetter]:
    rows = conn.execute(queries().dead_letters, (queue, max(0, limit))).fetchall()
    return [
        DeadLetter(
            id=r[0],
            queue=queue,
            name=r[1],
            payload=r[2],
            attempts=r[3],
            error=r[4] or "",
            traceback=r[5] or "",
            failed_at=r[6],
        )
        for r in rows
    ]


# ---- measurements ---------------------------------------------------------------------------


def record(conn: sqlite3.Connection, now: float, metrics: Sequence[TaskMetrics]) -> None:
    """Add each task function's measurements; its runs per minute are kept in ``extra``
    as ``m.<minute>`` keys, those past ``TaskMetrics.RETAIN_MINUTES`` dropped here, so a
    row holds at most about two hours of them."""
    Q = queries()
    minute = int(now // 60)
    for m in metrics:
        row = conn.execute(Q.metrics_extra, (m.task,)).fetchone()
        extra = _merge_extra(json.loads(row[0]) if row else {}, m.extra)
        slots = m.recent if m.recent else ({minute: m.count} if m.count else {})
        for slot, runs in slots.items():
            key = f"m.{int(slot)}"
            extra[key] = extra.get(key, 0) + int(runs)
        extra = {
            k: v
            for k, v in extra.items()
            if not k.startswith("m.") or TaskMetrics.keeps(int(k[2:]), minute)
        }
        conn.execute(
            Q.record,
            {
                "task": m.task,
                "count": m.count,
                "failures": m.failures,
                "wall_total": m.wall_total,
                "wall_max": m.wall_max,
                "cpu_total": m.cpu_total,
                "cpu_max": m.cpu_max,
                "mem_peak_max": m.mem_peak_max,
                "extra": json.dumps(extra, sort_keys=True),
            },
        )


def _merge_extra(stored: dict[str, float], new: dict[str, float]) -> dict[str, float]:
    """Extra measurements add up, except ``*_max`` ones, which keep the maximum."""
    out = dict(stored)
    for key, value in new.items():
        if key not in out:
            out[key] = value
        elif key.endswith("_max"):
            out[key] = max(out[key], value)
        else:
            out[key] = out[key] + value
    return out


def metrics(conn: sqlite3.Connection, now: float) -> list[TaskMetrics]:
    rows = conn.execute(queries().metrics).fetchall()
    minute = int(now // 60)
    return [TaskMetrics.from_row(r, json.loads(r[8]), minute) for r in rows]
