"""The JSON API under ``/api/v1/``: queues, tasks, dead letters, metrics and profiles, for
services in any language and for operators' scripts.

Every body in and out is a :mod:`msgspec` Struct of :mod:`offload.http.openapi`, which
generates the OpenAPI document from the same types the handlers decode: the document
cannot drift from what the server accepts. Creating a task runs the same
validation as ``send``; an error answers with one JSON body naming what was wrong::

    400 the request (body, arguments, a parameter) is wrong     404 no such queue or task
    409 a task with that name exists (or finished within its dedup window)
    413 the body is too large    501 the broker lacks task inspection    503 broker outage
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..brokers.base import Broker, QueueStats
from ..core import envelope as _env
from ..errors import (
    BrokerRefused,
    BrokerUnavailable,
    ConfigError,
    OffloadError,
    TaskAlreadyExists,
    UnknownQueue,
    UnknownTask,
    Unsupported,
)
from .auth import error_response
from .batching import EnqueueBatcher
from .openapi import (
    Count,
    Created,
    CreateTask,
    DeadLetter,
    DeadList,
    Enforced,
    Metric,
    MetricList,
    Policy,
    Profile,
    ProfileList,
    Queue,
    QueueList,
    Retry,
    Task,
)

if TYPE_CHECKING:
    from ..brokers.base import TaskInspection, TaskRecord
    from .context import HttpContext

__all__ = ["PREFIX", "ROUTES", "routes"]

PREFIX = "/api/v1"
#: the largest request body the API reads
MAX_BODY = 1024 * 1024
# -- helpers ------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_create_decoder = msgspec.json.Decoder(CreateTask)


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code, self.message = code, message


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(value), status, headers, media_type="application/json")


def _text_param(value: str, what: str) -> str:
    """A path parameter offload stores as text: 1-500 characters, no control characters
    (a database refuses some of them, and no id or name offload makes contains any)."""
    if not 0 < len(value) <= 500 or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _Refused(400, f"{what} {value[:80]!r}: must be 1-500 characters, none a control")
    return value


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 0 <= int(raw) <= 10_000:
        raise _Refused(400, f"limit={raw[:40]!r}: must be a whole number from 0 to 10000")
    return int(raw)


def _handler(
    fn: Callable[[HttpContext, Request], Awaitable[Response]], ctx: HttpContext
) -> Callable[[Request], Awaitable[Response]]:
    """Turn offload's errors into the one JSON error shape, each with its status code."""

    async def handle(request: Request) -> Response:
        try:
            return await fn(ctx, request)
        except _Refused as exc:
            return error_response(exc.code, exc.message)
        except TaskAlreadyExists as exc:
            return error_response(409, str(exc))
        except UnknownQueue as exc:
            in_path = "queue" in request.path_params
            return error_response(404 if in_path else 400, str(exc))
        except (UnknownTask, ConfigError) as exc:
            return error_response(400, str(exc))
        except Unsupported as exc:
            return error_response(501, str(exc))
        except BrokerUnavailable as exc:
            return error_response(503, f"{exc}; try again later", {"Retry-After": "1"})
        except BrokerRefused as exc:
            return error_response(502, str(exc))
        except OffloadError as exc:
            return error_response(500, f"{type(exc).__name__}: {exc}")

    return handle


async def _inspecting(ctx: HttpContext, op: Callable[[TaskInspection], Awaitable[Any]]) -> Any:
    """Run a task-inspection operation, or refuse (501) on a broker that lacks it."""

    async def call(b: Broker) -> Any:
        if not b.capabilities.inspect:
            raise Unsupported(
                f"broker {ctx.app.broker_url.split('://')[0]}:// cannot look at single "
                "tasks (Capabilities.inspect); use the sqlite, redis or postgresql broker"
            )
        return await op(cast("TaskInspection", b))

    return await ctx.call(ctx.app.registry.call, call)


def _decoded(payload: bytes) -> tuple[str, list[Any] | None, dict[str, Any] | None]:
    try:
        env = _env.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "<undecodable payload>", None, None
    return env.task, _plain(env.args), _plain(env.kwargs)


def _plain(value: Any) -> Any:
    """Arguments as JSON can carry them (tuples, sets, Decimals... become their JSON
    form via msgspec's own rules, bytes base64)."""
    try:
        return msgspec.json.decode(_encoder.encode(value))
    except (TypeError, msgspec.EncodeError):
        return repr(value)


def _queue_view(ctx: HttpContext, name: str, s: QueueStats, now: float) -> Queue:
    p = ctx.app.policy(name)
    r = p.retry
    e = s.policy
    oldest = s.oldest_ready_at
    return Queue(
        name=name,
        paused=s.paused,
        ready=s.ready,
        scheduled=s.scheduled,
        leased=s.leased,
        dead=s.dead,
        oldest_ready_age=None if oldest is None else max(0.0, now - oldest),
        policy=Policy(
            p.rate,
            p.bucket,
            p.max_concurrent,
            p.lease,
            p.dedup_window,
            p.timeout,
            Retry(r.limit, r.age_limit, r.min_backoff, r.max_backoff, r.max_doublings),
        ),
        enforced=None
        if e is None
        else Enforced(e.rate, e.bucket, e.max_concurrent, e.lease, e.dedup_window),
    )


async def queue_stats(ctx: HttpContext, names: list[str]) -> list[tuple[QueueStats, float]]:
    """Each queue's counts with the broker's clock, in one hop to the broker's loop (the
    dashboard and the metrics use this too)."""

    async def op(b: Broker) -> list[tuple[QueueStats, float]]:
        now = await b.now()
        return [(await b.stats(q), now) for q in names]

    return await ctx.call(ctx.app.registry.call, op)


async def _one_queue(ctx: HttpContext, name: str) -> Queue:
    ctx.app.policy(name)
    [(s, now)] = await queue_stats(ctx, [name])
    return _queue_view(ctx, name, s, now)


# -- the handlers -------------------------------------------------------------------------


async def list_queues(ctx: HttpContext, request: Request) -> Response:
    names = sorted(ctx.app.queues)
    stats = await queue_stats(ctx, names)
    views = [_queue_view(ctx, n, s, now) for n, (s, now) in zip(names, stats, strict=True)]
    return _json(QueueList(views))


async def get_queue(ctx: HttpContext, request: Request) -> Response:
    return _json(await _one_queue(ctx, request.path_params["queue"]))


async def pause_queue(ctx: HttpContext, request: Request) -> Response:
    name = request.path_params["queue"]
    await ctx.call(ctx.app.pause, name)
    return _json(await _one_queue(ctx, name))


async def resume_queue(ctx: HttpContext, request: Request) -> Response:
    name = request.path_params["queue"]
    await ctx.call(ctx.app.resume, name)
    return _json(await _one_queue(ctx, name))


async def purge_queue(ctx: HttpContext, request: Request) -> Response:
    return _json(Count(await ctx.call(ctx.app.purge, request.path_params["queue"])))


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refused(413, f"request body over {MAX_BODY:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def create_task(ctx: HttpContext, request: Request) -> Response:
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind != "application/json":
        raise _Refused(415, f"content-type {kind[:60]!r}: send application/json")
    try:
        call = _create_decoder.decode(await _body(request))
    except msgspec.ValidationError as exc:
        raise _Refused(400, f"request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise _Refused(400, f"request body is not valid JSON: {exc}") from None
    tf = ctx.app.get_task(call.task)
    new = tf.build(
        call.args,
        call.kwargs,
        name=call.name,
        delay=call.delay,
        eta=call.eta,
        queue=call.queue,
    )
    if not await _batcher(ctx).submit(new):
        raise TaskAlreadyExists(
            f"task name {call.name!r} already exists in queue {new.queue!r} (or finished "
            "within its dedup window); pick another name or leave name out"
        )
    body = Created(new.id, new.queue, tf.name, new.name)
    location = f"{PREFIX}/queues/{new.queue}/tasks/{new.id}"
    return _json(body, 201, {"Location": location})


def _batcher(ctx: HttpContext) -> EnqueueBatcher:
    """This event loop's batcher of task creations (see :mod:`.batching`)."""
    per_loop = ctx.extras.setdefault("enqueue_batchers", weakref.WeakKeyDictionary())
    loop = asyncio.get_running_loop()
    batcher = per_loop.get(loop)
    if batcher is None:
        batcher = per_loop[loop] = EnqueueBatcher(ctx.app.registry.enqueue_async)
    return batcher


def _task_view(t: TaskRecord) -> Task:
    task, args, kwargs = _decoded(t.payload)
    return Task(
        t.id,
        t.queue,
        t.name,
        task,
        args,
        kwargs,
        t.state,
        t.eta,
        t.attempts,
        t.first_attempt_at,
        t.enqueued_at,
        t.error,
        t.traceback,
    )


async def _record(ctx: HttpContext, request: Request) -> TaskRecord:
    queue = request.path_params["queue"]
    ctx.app.policy(queue)
    id = _text_param(request.path_params["id"], "task id")
    found = await _inspecting(ctx, lambda b: b.get_task(queue, id))
    if found is None:
        raise _Refused(404, f"no task {id!r} in queue {queue!r}")
    return found


async def get_task(ctx: HttpContext, request: Request) -> Response:
    return _json(_task_view(await _record(ctx, request)))


async def delete_task(ctx: HttpContext, request: Request) -> Response:
    queue = request.path_params["queue"]
    id = _text_param(request.path_params["id"], "task id")
    if not await ctx.call(ctx.app.delete_task, queue, id=id):
        raise _Refused(404, f"no task {id!r} in queue {queue!r}")
    return _json(Count(1))


async def list_dead(ctx: HttpContext, request: Request) -> Response:
    queue = request.path_params["queue"]
    found = await ctx.call(ctx.app.dead_letters, queue, _limit(request))
    views = [
        DeadLetter(
            d.id,
            d.queue,
            d.name,
            d.task,
            _plain(d.args),
            _plain(d.kwargs),
            d.attempts,
            d.error,
            d.traceback,
            d.failed_at,
        )
        for d in found
    ]
    return _json(DeadList(views))


async def requeue_all_dead(ctx: HttpContext, request: Request) -> Response:
    return _json(Count(await ctx.call(ctx.app.requeue_dead, request.path_params["queue"])))


async def _dead_one(ctx: HttpContext, request: Request) -> tuple[str, str]:
    record = await _record(ctx, request)
    if record.state != "dead":
        raise _Refused(404, f"task {record.id!r} in queue {record.queue!r} is not a dead letter")
    return record.queue, record.id


async def requeue_dead(ctx: HttpContext, request: Request) -> Response:
    queue, id = await _dead_one(ctx, request)
    return _json(Count(await ctx.call(ctx.app.requeue_dead, queue, id)))


async def delete_dead(ctx: HttpContext, request: Request) -> Response:
    queue, id = await _dead_one(ctx, request)
    return _json(Count(int(await ctx.call(ctx.app.delete_task, queue, id=id))))


async def list_metrics(ctx: HttpContext, request: Request) -> Response:
    ms = sorted(await ctx.call(ctx.app.metrics), key=lambda m: m.task)
    views = [
        Metric(
            m.task,
            m.count,
            m.failures,
            m.wall_total,
            m.wall_max,
            m.cpu_total,
            m.cpu_max,
            m.mem_peak_max,
        )
        for m in ms
    ]
    return _json(MetricList(views))


async def list_profiles(ctx: HttpContext, request: Request) -> Response:
    ms = sorted(await ctx.call(ctx.app.metrics), key=lambda m: m.task)
    views = [
        Profile(
            m.task,
            m.count,
            m.failures / m.count if m.count else 0.0,
            m.wall_total / m.count if m.count else 0.0,
            m.wall_max,
            m.cpu_total / m.count if m.count else 0.0,
            m.cpu_max,
            m.mem_peak_max,
        )
        for m in ms
    ]
    return _json(ProfileList(views))


async def openapi_document(ctx: HttpContext, request: Request) -> Response:
    from .openapi import document

    return _json(document())


#: every route: (method, path, handler, summary, request body type, response type, status)
ROUTES: list[tuple[str, str, Any, str, type | None, type, int]] = [
    ("GET", "/queues", list_queues, "List the app's queues with counts", None, QueueList, 200),
    ("GET", "/queues/{queue}", get_queue, "One queue: policy and counts", None, Queue, 200),
    ("POST", "/queues/{queue}/pause", pause_queue, "Stop claiming its tasks", None, Queue, 200),
    ("POST", "/queues/{queue}/resume", resume_queue, "Claim its tasks again", None, Queue, 200),
    (
        "POST",
        "/queues/{queue}/purge",
        purge_queue,
        "Delete ready+scheduled tasks",
        None,
        Count,
        200,
    ),
    ("POST", "/tasks", create_task, "Send a task (validated as send)", CreateTask, Created, 201),
    ("GET", "/queues/{queue}/tasks/{id}", get_task, "One task in any state", None, Task, 200),
    ("DELETE", "/queues/{queue}/tasks/{id}", delete_task, "Delete a task", None, Count, 200),
    ("GET", "/queues/{queue}/dead", list_dead, "Dead letters, oldest first", None, DeadList, 200),
    ("POST", "/queues/{queue}/dead/requeue", requeue_all_dead, "Requeue all", None, Count, 200),
    ("POST", "/queues/{queue}/dead/{id}/requeue", requeue_dead, "Requeue one", None, Count, 200),
    ("DELETE", "/queues/{queue}/dead/{id}", delete_dead, "Delete a dead letter", None, Count, 200),
    ("GET", "/metrics", list_metrics, "Per task function aggregates", None, MetricList, 200),
    ("GET", "/profiles", list_profiles, "Per task function costs", None, ProfileList, 200),
]


def routes(ctx: HttpContext) -> list[BaseRoute]:
    """The API's routes, mounted by :func:`offload.http.create_app` behind its auth."""
    out: list[BaseRoute] = [
        Route(PREFIX + path, _handler(fn, ctx), methods=[method]) for method, path, fn, *_ in ROUTES
    ]
    out.append(Route(PREFIX + "/openapi.json", _handler(openapi_document, ctx), methods=["GET"]))
    return out
