"""The Redis broker's Lua scripts, key layout and reply decoding (no I/O).

Every state change of the Redis broker is one script from ``lua/*.lua``, called by SHA
(``EVALSHA``, loading it on ``NOSCRIPT``). The scripts are the single source of truth; the
Python around them only builds arguments and decodes replies, for the async broker and
for the synchronous producer path alike.

Key layout (``P`` the URL's ``?prefix=``, default ``offload``; ``Q`` the queue)::

    {P:Q}:q       hash  policy (rate, cap, mc, lease, dedup), paused, bucket (tok, ts), seq
    {P:Q}:due     zset  ready tasks by visible_at (a future score: scheduled)
    {P:Q}:leased  zset  leased tasks by lease expiry
    {P:Q}:tasks   hash  id -> record (msgpack: state, attempts, ..., payload, ..., the
                        parked worker its lease was handed to)
    {P:Q}:dead    zset  dead tasks by failed_at
    {P:Q}:names   hash  name -> id while the named task exists
    {P:Q}:nexp    zset  name -> end of its dedup window after the task was removed
    {P:Q}:wake    list  wake-up tokens that idle workers BLPOP
    {P:Q}:parked  zset  ids of idle workers blocked on their inbox -> park deadline
    {P:Q}:inbox:W list  tasks enqueue leased to parked worker W (see handed_from)
    {P}:metrics   hash  "<task>\\x1f<measure>" -> number, for every task function
    {P}:runs:M    hash  task -> runs in Unix minute M; expires 120 minutes after M ends

The hash tag ``{P:Q}`` puts all of a queue's keys in one cluster slot, so every script
runs unchanged on Redis Cluster. ``list_tasks`` pages through ``{P:Q}:tasks`` with HSCAN,
so the hot path keeps no index for it; a ``{P:Q}:ids`` zset an earlier version kept is
never read, and purge and drop_queue delete one left behind.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..base import Claimed, DeadLetter, EnforcedPolicy, NewTask, QueueStats, TaskMetrics

__all__ = [
    "CommandPacker",
    "QueueKeys",
    "Script",
    "claimed_from",
    "dead_from",
    "enqueue_args",
    "enqueue_calls",
    "handed_from",
    "metrics_from",
    "parked_delay",
    "record_args",
    "runs_key",
    "runs_minutes",
    "scripts",
    "stats_from",
]

_LUA = Path(__file__).with_name("lua")
_QUEUE_SCRIPTS = (
    "ack", "claim", "dead_letter", "dead_letters", "declare", "delete", "enqueue", "extend",
    "inspect", "pause", "peek", "purge", "release", "requeue_dead", "retry", "stats",
)  # fmt: skip
_ENQUEUE_CHUNK = 1000  # tasks per script call: bounds the time one script holds Redis
_SEP = "\x1f"
_LEN = struct.Struct(">I")
_US = 1_000_000  # the scripts' times are integer microseconds
_DEFAULT_DEDUP = 3600.0  # DEFAULT_DEDUP in _lib.lua
_METRIC_FIELDS = (
    "count",
    "failures",
    "wall_total",
    "wall_max",
    "cpu_total",
    "cpu_max",
    "mem_peak_max",
)


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its source and the SHA1 that ``EVALSHA`` calls it by."""

    name: str
    source: str
    sha: str


_DEFINES = re.compile(r"^local (?:function )?([\w, ]+?)(?: =|\()", re.M)


def _with_lib(lib: str, body: str) -> str:
    """``body`` preceded by the blocks of ``_lib.lua`` it uses, directly or not, in file
    order: Redis runs a script's whole text on every call, so unused helpers cost time."""
    blocks = [b for b in lib.split("\n\n") if _DEFINES.search(b)]
    names = [
        {n.strip() for m in _DEFINES.finditer(b) for n in m.group(1).split(",")} for b in blocks
    ]
    used: set[int] = set()
    text = body
    while True:
        code = re.sub(r"--[^\n]*", "", text)
        new = {
            i
            for i, ns in enumerate(names)
            if i not in used and any(re.search(rf"(?<![\w.]){n}\b", code) for n in ns)
        }
        if not new:
            break
        used |= new
        text = "".join(blocks[i] for i in new)
    return "\n\n".join([*(blocks[i] for i in sorted(used)), body])


@cache
def scripts() -> dict[str, Script]:
    """Every script by name, read once from ``lua/`` (per-queue ones with ``_lib.lua``)."""
    lib = (_LUA / "_lib.lua").read_text()
    out = {}
    for name in [*_QUEUE_SCRIPTS, "record"]:
        body = (_LUA / f"{name}.lua").read_text()
        if name != "record":
            # The shebang (Redis 7 script flags, e.g. allow-oom) must stay the first line.
            flags, _, rest = body.partition("\n") if body.startswith("#!") else ("", "", body)
            body = _with_lib(lib, rest)
            source = f"{flags}\n{body}" if flags else body
        else:
            source = body
        out[name] = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    return out


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The nine keys of one queue, in the order every per-queue script expects."""

    queue: str
    keys: tuple[str, ...]

    @classmethod
    def of(cls, prefix: str, queue: str) -> QueueKeys:
        tag = f"{{{prefix}:{queue}}}"
        names = ("q", "due", "leased", "tasks", "dead", "names", "nexp", "wake", "parked")
        return cls(queue, tuple(f"{tag}:{n}" for n in names))

    @property
    def wake(self) -> str:
        return self.keys[7]

    def inbox(self, worker: str) -> str:
        """Where enqueue pushes the tasks it leased to ``worker`` while it was parked."""
        return f"{self.keys[7][:-4]}inbox:{worker}"


def _bulk(x: Any) -> bytes:
    if isinstance(x, str):
        x = x.encode()
    elif not isinstance(x, (bytes, bytearray, memoryview)):
        x = repr(x).encode()
    return b"$%d\r\n%s\r\n" % (len(x), x)


class CommandPacker:
    """Encodes ``EVALSHA sha numkeys keys... args...`` in the wire protocol, the constant
    head (script and keys) once per queue: a hot path's packing costs a microsecond."""

    def __init__(self) -> None:
        self._heads: dict[tuple[str, tuple[str, ...]], tuple[int, bytes]] = {}

    def evalsha(self, script: Script, keys: tuple[str, ...], args: Sequence[Any]) -> bytes:
        head = self._heads.get((script.sha, keys))
        if head is None:
            parts = ["EVALSHA", script.sha, str(len(keys)), *keys]
            head = self._heads[(script.sha, keys)] = (len(parts), b"".join(map(_bulk, parts)))
        n, prefix = head
        return b"*%d\r\n%s%s" % (n + len(args), prefix, b"".join(map(_bulk, args)))


def metrics_key(prefix: str) -> str:
    return f"{{{prefix}}}:metrics"


def _s(b: bytes | str) -> str:
    return b.decode() if isinstance(b, bytes) else b


def claimed_from(queue: str, reply: list) -> list[Claimed]:
    """Decode claim.lua's reply: {now, lease_until, (id, name, payload, attempts,
    first_attempt_at, enqueued_at, token, expired)*}, times in integer microseconds; or,
    from a claim that found nothing and parked the worker, {now, lease_until, delay}."""
    now, until = reply[0] / _US, reply[1] / _US
    out = []
    for i in range(2, len(reply) if len(reply) != 3 else 2, 8):
        id_, name, payload, attempts, first, enq, token, expired = reply[i : i + 8]
        out.append(
            Claimed(
                id_.decode(),
                queue,
                None if name is None else name.decode(),
                payload,
                attempts,
                first / _US,
                enq / _US,
                now,
                token.decode(),
                until,
                expired == 1,
            )
        )
    return out


def parked_delay(reply: list) -> int | None:
    """What a claim that parked the worker says peek.lua would have: microseconds until
    something may be claimable (0 now, -1 unknown); None when it claimed or did not park."""
    return reply[2] if len(reply) == 3 else None


def handed_from(queue: str, blob: bytes) -> list[Claimed]:
    """Decode a hand-off from a parked worker's inbox: claim.lua's reply fields but the
    expired flag (a hand-off never is), each as a 4-byte big-endian length and the bytes
    (encode_fields in ``_lib.lua``)."""
    fields: list[bytes] = []
    pos, end = 0, len(blob)
    while pos < end:
        (n,) = _LEN.unpack_from(blob, pos)
        pos += 4
        fields.append(blob[pos : pos + n])
        pos += n
    reply: list[Any] = [int(fields[0]), int(fields[1])]
    for i in range(2, len(fields), 7):
        id_, name, payload, attempts, first, enq, token = fields[i : i + 7]
        reply += [id_, name or None, payload, int(attempts), int(first), int(enq), token, 0]
    return claimed_from(queue, reply)


def stats_from(queue: str, reply: list) -> QueueStats:
    """Decode stats.lua's reply: counts, pause, and the stored policy (no lease stored:
    never declared)."""
    ready, scheduled, leased, dead, paused, rate, cap, mc, lease, dedup, *oldest = reply
    policy = None
    if lease is not None:
        policy = EnforcedPolicy(
            rate=None if rate is None else float(rate),
            bucket=None if cap is None else float(cap),
            max_concurrent=None if mc is None else int(float(mc)),
            lease=float(lease),
            dedup_window=_DEFAULT_DEDUP if dedup is None else float(dedup),
        )
    oldest_at = oldest[0] / _US if oldest and oldest[0] is not None else None
    return QueueStats(queue, ready, scheduled, leased, dead, bool(paused), policy, oldest_at)


def dead_from(queue: str, reply: list) -> list[DeadLetter]:
    out = []
    for i in range(0, len(reply), 7):
        id_, name, payload, attempts, error, tb, failed = reply[i : i + 7]
        out.append(
            DeadLetter(
                id_.decode(),
                queue,
                None if name is None else name.decode(errors="replace"),
                payload,
                attempts,
                error.decode(errors="replace"),
                tb.decode(errors="replace"),
                failed / _US,
            )
        )
    return out


def runs_key(prefix: str) -> str:
    """The prefix of the runs-per-minute hashes: ``{P}:runs:<minute>`` (the hash tag of
    the metrics hash, so record.lua may write both on Redis Cluster)."""
    return f"{{{prefix}}}:runs:"


def record_args(m: TaskMetrics) -> list[str | float | int]:
    """record.lua's arguments: the fields, the run counts by minute, the extra numbers."""
    args: list[str | float | int] = [
        m.task,
        m.count,
        m.failures,
        m.wall_total,
        m.wall_max,
        m.cpu_total,
        m.cpu_max,
        m.mem_peak_max,
        len(m.recent),
    ]
    for minute, runs in m.recent.items():
        args += [int(minute), int(runs)]
    for k, v in m.extra.items():
        args += [k, float(v)]
    return args


def runs_minutes(minute: int) -> range:
    """The minutes whose runs hashes ``metrics()`` reads when the server's clock reads
    ``minute``: those a broker keeps (TaskMetrics.keeps)."""
    return range(minute - TaskMetrics.RETAIN_MINUTES, minute + 2)


def metrics_from(raw: dict, runs: dict[int, dict] | None = None) -> list[TaskMetrics]:
    """Group the metrics hash's "<task>\\x1f<measure>" fields back into TaskMetrics, with
    ``runs`` (minute -> that minute's runs hash) as each task's ``recent``."""
    by_task: dict[str, TaskMetrics] = {}
    for field, value in raw.items():
        task, _, measure = _s(field).rpartition(_SEP)
        m = by_task.get(task)
        if m is None:
            m = by_task[task] = TaskMetrics(task)
        v = float(value)
        if measure.startswith("x."):
            m.extra[measure[2:]] = v
        elif measure in ("count", "failures", "mem_peak_max"):
            setattr(m, measure, int(v))
        elif measure in _METRIC_FIELDS:
            setattr(m, measure, v)
    for minute, hash_ in (runs or {}).items():
        for task, n in hash_.items():
            m = by_task.get(_s(task))
            if m is not None:  # a task's runs without its metrics: not listed, as before
                m.recent[minute] = int(n)
    return sorted(by_task.values(), key=lambda m: m.task)


def enqueue_args(tasks: Sequence[NewTask]) -> list:
    """enqueue.lua's arguments: id, name, payload, eta, delay per task."""
    args: list = []
    for t in tasks:
        args += [
            t.id,
            t.name or "",
            t.payload,
            "" if t.eta is None else repr(float(t.eta)),
            repr(float(t.delay or 0.0)),
        ]
    return args


def enqueue_calls(tasks: Sequence[NewTask]) -> list[tuple[str, list[int]]]:
    """Task indices per script call: grouped by queue, at most _ENQUEUE_CHUNK a call."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(t.queue, []).append(i)
    return [
        (q, idx[j : j + _ENQUEUE_CHUNK])
        for q, idx in groups.items()
        for j in range(0, len(idx), _ENQUEUE_CHUNK)
    ]
