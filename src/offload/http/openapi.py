"""The OpenAPI 3.1 document of the JSON API, generated from the routes and the msgspec
types the handlers decode and encode (:data:`offload.http.api.ROUTES`), so it describes
exactly what the server does. Served at ``/api/v1/openapi.json``."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec

from . import api

__all__ = ["document"]

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
    types = {api.ErrorBody}
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
        "content": {"application/json": {"schema": refs[api.ErrorBody]}},
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
