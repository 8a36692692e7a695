"""The OpenAPI document describes every route, and the server holds to it: schemathesis
fuzzes each operation (valid and invalid data) on every broker with 0 server errors and
every response as documented."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route
from starlette.testclient import TestClient

from offload import App
from offload.http import create_app
from offload.http.api import ROUTES
from offload.http.openapi import document

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: examples per operation and generation mode: enough to find the classic faults (bad
#: types, control characters, huge numbers) while the file stays well under a minute
EXAMPLES = 12


def make_app(url: str) -> App:
    app = App("fuzzapp", broker=url)
    app.queue("emails")

    @app.task(queue="emails", name="fuzzapp.send_email")
    def send_email(to: str, subject: str = "", count: int = 1) -> None:
        return None

    return app


def test_the_document_names_every_api_route(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    server = create_app(app, tokens=[TOKEN], parts=("api",))
    served = {
        (method, route.path)
        for route in server.routes
        if isinstance(route, Route) and route.path.startswith("/api/v1/")
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (method.upper(), path) for path, ops in document()["paths"].items() for method in ops
    }
    assert served == documented
    with TestClient(server) as c:
        assert c.get("/api/v1/openapi.json", headers=AUTH).json() == document()
        assert c.get("/api/v1/openapi.json").status_code == 401
    app.close()


def test_the_document_is_valid_openapi():
    schema = schemathesis.openapi.from_dict(document())
    schema.validate()
    operations = [op.ok() for op in schema.get_all_operations()]
    ids = [op["operationId"] for ops in document()["paths"].values() for op in ops.values()]
    assert len(operations) == len(ids) == len(set(ids)) == len(ROUTES) + 1


@pytest.fixture
def served(broker_url):
    app = make_app(broker_url)
    app.send_email = app.tasks["fuzzapp.send_email"]
    server = create_app(app, tokens=[TOKEN], parts=("api",))
    with TestClient(server):  # runs the lifespan: the server's own loop broker
        yield app, server
    app.close()


@pytest.mark.timeout(120)
def test_fuzz_every_operation_no_server_error(served):
    app, server = served
    app.tasks["fuzzapp.send_email"].send("a@example.com")
    schema = schemathesis.openapi.from_dict(document())
    schema.app = server
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case):
                case.call_and_validate(headers=AUTH, checks=checks)

            fuzz()
