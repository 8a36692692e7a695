"""The JSON API's types (msgspec Structs the handlers decode and encode) and the OpenAPI
3.1 document generated from them and the routes (:data:`offload.http.api.ROUTES`), so it
describes exactly what the server does. Served at ``/api/v1/openapi.json``."""

from __future__ import annotations

import datetime as _dt
import functools
import re
from typing import Annotated, Any

import msgspec

__all__ = ["document"]

#: the most seconds a delay may be (ten years, as ``send``)
MAX_DELAY = 10 * 365 * 86400.0

# -- the types ---------------------------------------------------------------------------

Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_DELAY)]
TaskName = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class CreateTask(msgspec.Struct, forbid_unknown_fields=True):
    """A call of a registered task function, validated as ``send`` validates it."""

    task: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    #: unique in its queue while it exists and for the queue's dedup window (409 if taken)
    name: TaskName | None = None
    #: seconds from now before it may run (or ``eta``, not both)
    delay: Seconds | None = None
    #: when it may run, ISO 8601 with a UTC offset
    eta: Annotated[_dt.datetime, msgspec.Meta(tz=True)] | None = None
    #: another queue than the task function's own
    queue: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class Created(msgspec.Struct):
    id: str
    queue: str
    task: str
    name: str | None


class Retry(msgspec.Struct):
    limit: int | None
    age_limit: float | None
    min_backoff: float
    max_backoff: float
    max_doublings: int


class Policy(msgspec.Struct):
    """The queue's policy as this server's App declares it."""

    rate: float | None
    bucket_size: float | None
    max_concurrent: int | None
    lease: float
    dedup_window: float
    timeout: float | None
    retry: Retry


class Enforced(msgspec.Struct):
    """What the broker enforces now (the last declaration wins)."""

    rate: float | None
    bucket: float | None
    max_concurrent: int | None
    lease: float
    dedup_window: float


class Queue(msgspec.Struct):
    name: str
    paused: bool
    ready: int
    scheduled: int
    leased: int
    dead: int
    #: seconds the oldest claimable task has waited; null when none waits
    oldest_ready_age: float | None
    policy: Policy
    enforced: Enforced | None


class QueueList(msgspec.Struct):
    queues: list[Queue]


class Task(msgspec.Struct):
    id: str
    queue: str
    name: str | None
    #: the task function, or "<undecodable payload>"
    task: str
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    #: ready, scheduled, leased or dead
    state: str
    #: broker clock, epoch seconds: when due (ready, scheduled), lease end, or failure time
    eta: float
    attempts: int
    first_attempt_at: float | None
    enqueued_at: float
    error: str
    traceback: str


class DeadLetter(msgspec.Struct):
    id: str
    queue: str
    name: str | None
    task: str
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    attempts: int
    error: str
    traceback: str
    failed_at: float


class DeadList(msgspec.Struct):
    dead: list[DeadLetter]


class Count(msgspec.Struct):
    """How many tasks an operation affected."""

    count: int


class Metric(msgspec.Struct):
    task: str
    count: int
    failures: int
    wall_total: float
    wall_max: float
    cpu_total: float
    cpu_max: float
    mem_peak_max: int


class MetricList(msgspec.Struct):
    metrics: list[Metric]


class Profile(msgspec.Struct):
    """What one run of a task function costs, as the workers measured it."""

    task: str
    runs: int
    failure_rate: float
    wall_avg: float
    wall_max: float
    cpu_avg: float
    cpu_max: float
    mem_peak_max: int


class ProfileList(msgspec.Struct):
    profiles: list[Profile]


class ApiError(msgspec.Struct):
    code: int
    status: str
    message: str


class ErrorBody(msgspec.Struct):
    error: ApiError


# -- the document ---------------------------------------------------------------------

_ERRORS = {
    "400": "The request is wrong: the message says which part and why",
    "401": "No accepted bearer token or session",
    "403": "A browser write without its CSRF token, or from another site",
    "404": "No such queue or task",
    "409": "A task with that name exists (or finished within its dedup window)",
    "413": "The body is too large",
    "415": "The body is not application/json",
    "501": "The broker cannot look at single tasks",
    "503": "The broker is unreachable; try again",
}


def _errors_for(method: str, path: str, body: type | None) -> list[str]:
    codes = ["401", "503"]
    if "{" in path:
        codes += ["400", "404"]
    if method != "GET":
        codes.append("403")
    if body is not None:
        codes += ["400", "409", "413", "415"]
    if "{id}" in path:
        codes.append("501")
    if path.endswith("/dead"):
        codes.append("400")
    return sorted(set(codes))


def _parameter(name: str) -> dict[str, Any]:
    what = "the queue's name" if name == "queue" else "the task's id"
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": what,
        "schema": {"type": "string", "minLength": 1, "maxLength": 500},
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once; it depends only on the code)."""
    from . import api

    types: set[type] = {ErrorBody}
    for *_, body, response, _status in api.ROUTES:
        types.add(response)
        if body is not None:
            types.add(body)
    ordered = sorted(types, key=lambda t: t.__name__)
    schemas, components = msgspec.json.schema_components(
        ordered, ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip(ordered, schemas, strict=True))
    error = {
        "content": {"application/json": {"schema": refs[ErrorBody]}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for method, path, fn, summary, body, response, status in api.ROUTES:
        op: dict[str, Any] = {
            "operationId": fn.__name__,
            "summary": summary,
            "responses": {
                str(status): {
                    "description": "OK",
                    "content": {"application/json": {"schema": refs[response]}},
                }
            },
        }
        params = [_parameter(p) for p in re.findall(r"{(\w+)}", path)]
        if path.endswith("/dead"):
            params.append(
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": "the most dead letters to return",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10000, "default": 100},
                }
            )
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[body]}},
            }
        for code in _errors_for(method, path, body):
            op["responses"][code] = {"description": _ERRORS[code], **error}
        paths.setdefault(api.PREFIX + path, {})[method.lower()] = op
    paths[api.PREFIX + "/openapi.json"] = {
        "get": {
            "operationId": "openapi_document",
            "summary": "This document",
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                "401": {"description": _ERRORS["401"], **error},
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "offload JSON API",
            "version": "1",
            "description": "Queues, tasks, dead letters, metrics and profiles of one offload "
            "App. Every route needs 'Authorization: Bearer TOKEN'.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
