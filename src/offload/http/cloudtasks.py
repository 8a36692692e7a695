"""The Cloud Tasks v2 REST surface: Google's own ``google-cloud-tasks`` client (REST
transport) manages offload's queues and tasks through it.

A Cloud Tasks queue ``projects/P/locations/L/queues/Q`` is the offload queue ``Q`` (any
project and location are accepted and echoed back). Queues: create, get, list, patch (with
``updateMask``), delete, pause, resume, purge; tasks: create, get, list, delete, run. A task
is an HTTP-target task (``httpRequest``: url, httpMethod, headers, base64 body), delivered
by the workers serving its queue through the built-in push task function
(:mod:`offload.push`).

How the two models meet:

* ``rateLimits.maxDispatchesPerSecond`` is the queue's ``rate`` (0 or absent: unlimited),
  ``maxBurstSize`` its token bucket (settable here, unlike Google's), and
  ``maxConcurrentDispatches`` its ``max_concurrent``; ``retryConfig`` maps to App Engine's
  retry parameters, which offload's retry policy is: ``maxAttempts`` is ``limit + 1`` (-1:
  unlimited), ``maxRetryDuration`` is ``age_limit`` (0: unlimited).
* The queues listed are those the served App declares, plus those created through this
  surface and those another process stored in the broker (adopted when first named).
  Everything is stored in the broker (docs/http.md, "Where a queue's settings live"):
  rate and concurrency as the queue's declared policy, where the last declaration wins
  (an App declaring the queue when it starts puts back its own); a ``retryConfig`` that a
  create sets or a patch names as the queue's retry override
  (:mod:`offload.brokers.overrides`), which every worker serving the queue applies over
  its own App's declaration until it is changed here again. A queue shows the override
  when one is stored, else the served App's retry policy (the default for a queue it
  does not declare).
* Concurrent ``tasks.create`` requests share one broker call (:mod:`.batching`) on the
  server loop's own broker; each answer is the task as stored, built without a read-back
  (its ``createTime`` the broker's clock before the enqueue, :class:`.batching.BrokerClock`).
* A named task keeps its name reserved for the queue's dedup window after it finished
  (``ALREADY_EXISTS`` meanwhile), as Google's does for a while. ``tasks.purge`` deletes
  ready and scheduled tasks; running ones finish and dead letters stay.
* ``dispatchCount`` counts attempts; ``responseCount`` counts the attempts that ended
  (offload does not tell a response from a connection error apart afterwards);
  ``lastAttempt.responseStatus`` carries the last error.

Errors use Google's JSON shape (``{"error": {"code", "message", "status"}}``), so the client
raises its usual exceptions (``NotFound``, ``AlreadyExists``, ``InvalidArgument``...).
Requests with ``$alt=json;enum-encoding=int`` (what the Python client sends) get integer
enums back; others get enum names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..app import PUSH_TASK
from ..brokers.base import Broker, NewTask, QueueStats, TaskInspection, TaskRecord
from ..brokers.overrides import RetryOverrides
from ..brokers.pages import next_page_after
from ..core.policy import QueuePolicy, RetryPolicy
from ..errors import BrokerError, ConfigError, UnknownQueue
from ..push import METHODS, make_request
from .batching import Batcher, BrokerClock
from .cloudtasks_json import (
    PRECONDITION,
    STATUS,
    TASK_ID,
    ApiError,
    apply_queue,
    as_bytes,
    camel,
    page_size,
    queue_json,
    seconds,
    task_json,
    timestamp,
    view,
)
from .context import HttpContext

__all__ = ["routes"]

_QUEUES = re.compile(r"projects/([^/]+)/locations/([^/]+)/queues")
_QUEUE = re.compile(r"projects/([^/]+)/locations/([^/]+)/queues/([^/:]+)(?::(\w+))?")
_TASKS = re.compile(r"projects/([^/]+)/locations/([^/]+)/queues/([^/:]+)/tasks")
_JSON = "application/json"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_TASK = re.compile(r"projects/([^/]+)/locations/([^/]+)/queues/([^/:]+)/tasks/([^/:]+)(?::(\w+))?")


def routes(ctx: HttpContext) -> list[BaseRoute]:
    """One route under ``/v2/``: Cloud Tasks puts verbs after a colon (``Q:pause``), which
    a path template cannot split, so the handler matches the path itself."""

    async def handle(request: Request) -> Response:
        try:
            return Response(_encode(await _dispatch(ctx, request)), media_type=_JSON)
        except ApiError as exc:
            return _error(exc.code, str(exc), exc.status)
        except UnknownQueue as exc:
            return _error(404, str(exc))
        except ConfigError as exc:
            return _error(400, str(exc))
        except BrokerError as exc:
            return _error(503, str(exc))

    return [Route("/v2/{path:path}", handle, methods=["GET", "POST", "PATCH", "DELETE"])]


def _error(code: int, message: str, status: str | None = None) -> Response:
    status = status or STATUS.get(code, "UNKNOWN")
    body = {"error": {"code": code, "message": message, "status": status}}
    return Response(_encode(body), code, media_type=_JSON)


async def _dispatch(ctx: HttpContext, request: Request) -> Any:
    path, method = request.path_params["path"], request.method
    ints = "enum-encoding=int" in request.query_params.get("$alt", "")
    q = request.query_params
    if m := _QUEUES.fullmatch(path):
        parent = path
        if method == "GET":
            return await _list_queues(ctx, parent, q, ints)
        if method == "POST":
            return await _create_queue(ctx, parent, await _body(request), ints)
    elif m := _QUEUE.fullmatch(path):
        qid, verb = m.group(3), m.group(4)
        name = path.rsplit(":", 1)[0] if verb else path
        if verb is None and method == "GET":
            return await _queue(ctx, name, qid, ints)
        if verb is None and method == "PATCH":
            return await _patch_queue(ctx, name, qid, await _body(request), q, ints)
        if verb is None and method == "DELETE":
            return await _delete_queue(ctx, qid)
        if verb in ("pause", "resume", "purge") and method == "POST":
            return await _queue_verb(ctx, name, qid, verb, ints)
    elif m := _TASKS.fullmatch(path):
        qid, qname = m.group(3), path.removesuffix("/tasks")
        if method == "GET":
            return await _list_tasks(ctx, qname, qid, q, ints)
        if method == "POST":
            return await _create_task(ctx, qname, qid, await _body(request), ints)
    elif m := _TASK.fullmatch(path):
        qid, tid, verb = m.group(3), m.group(4), m.group(5)
        qname = path.split("/tasks/")[0]
        if verb is None and method == "GET":
            full = view(q.get("responseView"))
            return task_json(qname, await _get_task(ctx, qid, tid), full, ints)
        if verb is None and method == "DELETE":
            return await _delete_task(ctx, qid, tid)
        if verb == "run" and method == "POST":
            body = await _body(request)
            return await _run_task(ctx, qname, qid, tid, view(body.get("responseView")), ints)
    else:
        raise ApiError(404, f"no Cloud Tasks resource at /v2/{path}")
    raise ApiError(405, f"{method} /v2/{path} is not a Cloud Tasks method offload serves")


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = _decode(raw)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


async def _broker(ctx: HttpContext, op: Any, *, declare: bool = True) -> Any:
    """Run ``op(broker)`` on the broker the server opened on this loop (its queues
    declared at start, a queue made here declared by :func:`_store`), or else through the
    App's facade, in a thread."""
    b = ctx.app.registry.loop_broker(asyncio.get_running_loop())
    if b is not None:
        return await op(b)
    return await ctx.call(ctx.app.registry.call, op, declare=declare)


def _inspecting(b: Broker) -> TaskInspection:
    if not isinstance(b, TaskInspection):
        raise ApiError(501, f"broker {b.url!r} cannot look at single tasks (no inspection)")
    return b


# -- queues -----------------------------------------------------------------------------


async def _policy(ctx: HttpContext, qid: str) -> QueuePolicy:
    """The App's policy of queue ``qid``; one only the broker stores is adopted."""
    registry = ctx.app.registry
    p = registry.queues.get(qid)
    if p is not None:
        return p
    QueuePolicy(qid)  # a bad id is INVALID_ARGUMENT, not NOT_FOUND
    stats: QueueStats = await _broker(ctx, lambda b: b.stats(qid), declare=False)
    e = stats.policy
    if e is None:
        raise ApiError(404, f"queue {qid!r} not found")
    p = QueuePolicy(
        qid,
        rate=e.rate,
        bucket_size=None if e.bucket is None else max(1, int(e.bucket)),
        max_concurrent=e.max_concurrent,
        lease=e.lease,
        dedup_window=e.dedup_window,
    )
    registry.declare(p)
    return p


def _overrides(b: Broker) -> RetryOverrides | None:
    return b if isinstance(b, RetryOverrides) else None


async def _effective(ctx: HttpContext, qid: str) -> tuple[QueuePolicy, QueueStats]:
    """Queue ``qid``'s policy as workers apply it (the App's, with the retry override the
    broker stores, if any) and its stats, in one hop to the broker."""
    p = await _policy(ctx, qid)

    async def read(b: Broker) -> tuple[QueueStats, dict[str, RetryPolicy]]:
        o = _overrides(b)
        return await b.stats(qid), {} if o is None else await o.retry_overrides([qid])

    stats, stored = await _broker(ctx, read)
    if qid in stored:
        p = dataclasses.replace(p, retry=stored[qid])
    return p, stats


async def _queue(ctx: HttpContext, name: str, qid: str, ints: bool) -> dict[str, Any]:
    p, stats = await _effective(ctx, qid)
    return queue_json(name, p, stats, ints)


async def _list_queues(ctx: HttpContext, parent: str, q: Any, ints: bool) -> dict[str, Any]:
    size = page_size(q.get("pageSize"))
    after = q.get("pageToken") or ""
    ids = sorted(i for i in ctx.app.registry.queues if i > after)
    out = [await _queue(ctx, f"{parent}/{i}", i, ints) for i in ids[:size]]
    body: dict[str, Any] = {"queues": out}
    if len(ids) > size:
        body["nextPageToken"] = ids[size - 1]
    return body


async def _create_queue(ctx: HttpContext, parent: str, body: dict, ints: bool) -> dict:
    name = body.get("name")
    m = _QUEUE.fullmatch(name) if isinstance(name, str) else None
    if m is None or m.group(4) or not name.startswith(parent + "/"):
        raise ApiError(400, f"queue.name {name!r} must be {parent}/QUEUE_ID")
    qid = m.group(3)
    try:
        await _policy(ctx, qid)
    except ApiError as exc:
        if exc.code != 404:
            raise
    else:
        raise ApiError(409, f"queue {name} already exists")
    return await _store(ctx, name, *apply_queue(QueuePolicy(qid), body, None), ints)


async def _patch_queue(ctx: HttpContext, name: str, qid: str, body: dict, q: Any, ints: bool):
    if body.get("name", name) != name:
        raise ApiError(400, f"queue.name {body.get('name')!r} differs from the URL's {name!r}")
    mask = q.get("updateMask") or q.get("update_mask")
    paths = None if not mask else {camel(p.strip()) for p in mask.split(",") if p.strip()}
    try:
        p, _ = await _effective(ctx, qid)  # a mask naming some retry fields keeps the others
    except ApiError as exc:
        if exc.code != 404:
            raise
        p = QueuePolicy(qid)  # as Google's: patching a queue that does not exist creates it
    return await _store(ctx, name, *apply_queue(p, body, paths), ints)


async def _store(ctx: HttpContext, name: str, p: QueuePolicy, retry: bool, ints: bool) -> dict:
    """Declare ``p`` and, when the request set any ``retryConfig`` field (``retry``), store
    its retry policy as the queue's override, which every worker applies (see
    :mod:`offload.brokers.overrides`); otherwise a stored override stays as it was."""

    async def write(b: Broker) -> None:
        o = _overrides(b)
        if retry and o is None:
            raise ApiError(
                501,
                f"broker {b.url.split('://')[0]}:// cannot store a queue's retry policy "
                "(RetryOverrides); leave retryConfig out, or use the sqlite, redis or "
                "postgresql broker",
            )
        await b.declare([p])
        if retry and o is not None:
            await o.set_retry_override(p.name, p.retry)

    await _broker(ctx, write)
    ctx.app.registry.declare(p)
    return await _queue(ctx, name, p.name, ints)


async def _delete_queue(ctx: HttpContext, qid: str) -> dict:
    await _policy(ctx, qid)
    if qid == "default":
        raise ApiError(
            400, "the default queue cannot be deleted: every App declares it", PRECONDITION
        )
    registry = ctx.app.registry
    await _broker(ctx, lambda b: _inspecting(b).drop_queue(qid), declare=False)
    with registry.lock:
        registry.queues.pop(qid, None)
    return {}


async def _queue_verb(ctx: HttpContext, name: str, qid: str, verb: str, ints: bool) -> dict:
    await _policy(ctx, qid)
    if verb == "purge":
        await _broker(ctx, lambda b: b.purge(qid))
    else:
        await _broker(ctx, lambda b: b.set_paused(qid, verb == "pause"))
    return await _queue(ctx, name, qid, ints)


# -- tasks ------------------------------------------------------------------------------


def _key(qid: str, tid: str) -> str:
    """The offload id of Cloud Tasks task ``tid``: unique across queues, as ids must be."""
    return f"{qid}/{tid}"


async def _get_task(ctx: HttpContext, qid: str, tid: str) -> TaskRecord:
    await _policy(ctx, qid)

    async def get(b: Broker) -> TaskRecord | None:
        ins = _inspecting(b)
        # made here (queue/id), or by send or App.push (its own id)
        return await ins.get_task(qid, _key(qid, tid)) or await ins.get_task(qid, tid)

    rec = await _broker(ctx, get)
    if rec is None:
        raise ApiError(404, f"task {tid!r} not found in queue {qid!r}")
    return rec


async def _list_tasks(ctx: HttpContext, qname: str, qid: str, q: Any, ints: bool) -> dict:
    await _policy(ctx, qid)
    size = page_size(q.get("pageSize"))
    after = q.get("pageToken") or None
    recs = await _broker(ctx, lambda b: _inspecting(b).list_tasks(qid, limit=size, after=after))
    full = view(q.get("responseView"))
    body: dict[str, Any] = {"tasks": [task_json(qname, r, full, ints) for r in recs]}
    # in any order, a page possibly short (even empty) with more to come, as Google's
    token = next_page_after(recs, size)
    if token is not None:
        body["nextPageToken"] = token
    return body


async def _create_task(ctx: HttpContext, qname: str, qid: str, body: dict, ints: bool):
    task = body.get("task")
    if not isinstance(task, dict):
        raise ApiError(400, "CreateTaskRequest.task is required")
    await _policy(ctx, qid)
    name = task.get("name") or None
    tid = None
    if name is not None:
        parent = f"{qname}/tasks/"
        if not isinstance(name, str) or not name.startswith(parent):
            raise ApiError(400, f"task.name {name!r} must be {parent}TASK_ID")
        tid = name[len(parent) :]
        if not TASK_ID.fullmatch(tid):
            raise ApiError(400, f"task id {tid!r}: use 1-500 letters, digits, '-' or '_'")
    req = task.get("httpRequest")
    if not isinstance(req, dict):
        raise ApiError(400, "task.httpRequest is required (offload serves HTTP-target tasks)")
    for unsupported in ("oauthToken", "oidcToken", "appEngineHttpRequest"):
        if unsupported in req or unsupported in task:
            raise ApiError(400, f"{unsupported} is not supported; push tasks are signed instead")
    method = req.get("httpMethod") or "POST"
    if isinstance(method, int) and 1 <= method <= len(METHODS):
        method = METHODS[method - 1]
    raw = as_bytes("httpRequest.body", req.get("body") or "")
    deadline = 600.0
    if task.get("dispatchDeadline"):
        deadline = seconds("dispatchDeadline", task["dispatchDeadline"])
    when = None
    if task.get("scheduleTime"):
        when = timestamp("scheduleTime", task["scheduleTime"])
    request = make_request(req.get("url"), raw, req.get("headers") or {}, method, deadline)
    if when is not None:
        request["eta"] = when
    tf = ctx.app.get_task(PUSH_TASK)
    eta = None if when is None else datetime.fromtimestamp(when, UTC)
    new = tf.build(args=(request,), queue=qid, name=tid, eta=eta)
    new.id = _key(qid, new.id if tid is None else tid)
    now = await _creations(ctx).submit(new)
    if now is None:
        raise ApiError(409, f"task {name} already exists (or finished within the dedup window)")
    # the task as stored, without reading it back: a new task has no attempts, and its
    # createTime (and scheduleTime, when none was given) is the broker's clock just before
    # the call that stored it
    rec = TaskRecord(
        id=new.id,
        queue=qid,
        name=new.name,
        payload=new.payload,
        state="scheduled" if when is not None and when > now else "ready",
        eta=now if when is None else when,
        attempts=0,
        first_attempt_at=None,
        enqueued_at=now,
    )
    return task_json(qname, rec, view(body.get("responseView")), ints, request)


def _creations(ctx: HttpContext) -> Batcher[NewTask, float | None]:
    """This event loop's batcher of task creations (see :mod:`.batching`): concurrent
    ``tasks.create`` requests share one hop to the broker and one ``enqueue``."""
    per_loop = ctx.extras.setdefault("cloudtasks_batchers", weakref.WeakKeyDictionary())
    loop = asyncio.get_running_loop()
    batcher = per_loop.get(loop)
    if batcher is None:
        clock = BrokerClock()

        async def create(tasks: Sequence[NewTask]) -> list[float | None]:
            return await _broker(ctx, lambda b: _create(b, tasks, clock))

        batcher = per_loop[loop] = Batcher(create)
    return batcher


async def _create(b: Broker, tasks: Sequence[NewTask], clock: BrokerClock) -> list[float | None]:
    """Store ``tasks`` in one enqueue; per task the broker's clock when it was created, or
    None when its name is taken (ALREADY_EXISTS). A named task's id is derived from its
    name, and an enqueue reports a task whose id exists as created (it is idempotent by
    id), so a named task whose id exists, or which an earlier one of the batch carries, is
    refused here first: of two creations of one name the first wins, as one by one."""
    named = [t for t in tasks if t.name is not None]
    exists: dict[str, bool] = {}
    if named:
        ins = _inspecting(b)
        if b.capabilities.inline:  # driven without a loop by the App's facade: one by one
            found = [await ins.get_task(t.queue, t.id) for t in named]
        else:  # the lookups in flight together
            found = await asyncio.gather(*(ins.get_task(t.queue, t.id) for t in named))
        exists = {t.id: rec is not None for t, rec in zip(named, found, strict=True)}
    fresh: list[int] = []
    seen: set[str] = set()
    for i, t in enumerate(tasks):
        if t.name is not None:
            if t.id in seen or exists[t.id]:
                continue
            seen.add(t.id)
        fresh.append(i)
    now = await clock.now(b)
    out: list[float | None] = [None] * len(tasks)
    if fresh:
        for i, ok in zip(fresh, await b.enqueue([tasks[i] for i in fresh]), strict=True):
            out[i] = now if ok else None
    return out


async def _delete_task(ctx: HttpContext, qid: str, tid: str) -> dict:
    rec = await _get_task(ctx, qid, tid)
    if not await _broker(ctx, lambda b: b.delete(qid, id=rec.id)):
        raise ApiError(404, f"task {tid!r} not found in queue {qid!r}")
    return {}


async def _run_task(ctx: HttpContext, qname: str, qid: str, tid: str, full: bool, ints: bool):
    rec = await _get_task(ctx, qid, tid)
    if not await _broker(ctx, lambda b: _inspecting(b).run_task(qid, rec.id)):
        msg = f"task {tid!r} is {rec.state}: only a waiting task can run now"
        raise ApiError(400, msg, PRECONDITION)
    return task_json(qname, await _get_task(ctx, qid, tid), full, ints)
