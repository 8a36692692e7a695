"""The JSON API on every broker: queues, tasks (created with send's validation), dead
letters, metrics and profiles; each bad input gets one clear error with the right status."""

from __future__ import annotations

import asyncio
import time

import pytest
from starlette.testclient import TestClient

from offload import App, Retry
from offload.http import create_app
from offload.testing import run_until_idle

TOKEN = "api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(url: str) -> App:
    app = App("apiapp", broker=url)
    app.queue("emails", rate="50/s", max_concurrent=4, retry=Retry(limit=0))
    app.queue("reports")

    @app.task(queue="emails", name="apiapp.send_email")
    def send_email(to: str, subject: str = "") -> None:
        if to == "boom":
            raise RuntimeError("mail server said no")

    return app


@pytest.fixture
def app(broker_url):
    a = make_app(broker_url)
    yield a
    a.close()


@pytest.fixture
def client(app):
    with TestClient(create_app(app, tokens=[TOKEN], parts=("api",)), headers=AUTH) as c:
        yield c


def error_of(r, code: int) -> str:
    assert r.status_code == code, r.text
    body = r.json()["error"]
    assert body["code"] == code and body["status"]
    return body["message"]


def create(client, **body):
    return client.post("/api/v1/tasks", json={"task": "apiapp.send_email", **body})


def test_queues_list_and_get(client):
    create(client, args=["a@example.com"])
    create(client, args=["b@example.com"], delay=600)
    body = client.get("/api/v1/queues").json()
    assert [q["name"] for q in body["queues"]] == ["default", "emails", "reports"]
    q = client.get("/api/v1/queues/emails").json()
    assert (q["ready"], q["scheduled"], q["leased"], q["dead"], q["paused"]) == (1, 1, 0, 0, False)
    assert q["policy"]["rate"] == 50.0 and q["policy"]["max_concurrent"] == 4
    assert q["policy"]["retry"]["limit"] == 0
    assert q["enforced"]["rate"] == 50.0
    assert 0 <= q["oldest_ready_age"] < 60
    assert client.get("/api/v1/queues/reports").json()["oldest_ready_age"] is None
    assert "declare it" in error_of(client.get("/api/v1/queues/nope"), 404)


def test_pause_resume_purge(client):
    create(client, args=["a@example.com"])
    assert client.post("/api/v1/queues/emails/pause").json()["paused"] is True
    assert client.get("/api/v1/queues/emails").json()["paused"] is True
    assert client.post("/api/v1/queues/emails/resume").json()["paused"] is False
    assert client.post("/api/v1/queues/emails/purge").json() == {"count": 1}
    assert client.get("/api/v1/queues/emails").json()["ready"] == 0
    error_of(client.post("/api/v1/queues/nope/pause"), 404)
    error_of(client.get("/api/v1/queues/emails/pause"), 405)


def test_create_task_then_get_and_delete_it(client):
    r = create(client, args=["a@example.com"], kwargs={"subject": "hi"}, name="welcome-1")
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["queue"] == "emails" and made["task"] == "apiapp.send_email"
    assert made["name"] == "welcome-1"
    assert r.headers["location"] == f"/api/v1/queues/emails/tasks/{made['id']}"
    got = client.get(r.headers["location"]).json()
    assert got["state"] == "ready" and got["args"] == ["a@example.com"]
    assert got["kwargs"] == {"subject": "hi"} and got["name"] == "welcome-1"
    assert got["attempts"] == 0 and got["task"] == "apiapp.send_email"
    assert client.delete(r.headers["location"]).json() == {"count": 1}
    assert "no task" in error_of(client.get(r.headers["location"]), 404)
    error_of(client.delete(r.headers["location"]), 404)


def test_delay_and_eta_schedule(client):
    r = create(client, args=["a@example.com"], delay=120)
    got = client.get(r.headers["location"]).json()
    assert got["state"] == "scheduled" and got["eta"] > time.time() + 100
    r = create(client, args=["a@example.com"], eta="2099-01-01T00:00:00+00:00")
    assert client.get(r.headers["location"]).json()["state"] == "scheduled"


def test_duplicate_name_is_409(client):
    assert create(client, args=["a@example.com"], name="once").status_code == 201
    assert "already exists" in error_of(create(client, args=["b@example.com"], name="once"), 409)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"task": "apiapp.send_email"}, "missing 1 required positional argument: 'to'"),
        ({"task": "apiapp.send_email", "args": ["a", "b", "c"]}, "but 3 were given"),
        ({"task": "apiapp.send_email", "kwargs": {"x": 1}, "args": ["a"]}, "unexpected keyword"),
        ({"task": "nope", "args": []}, "not registered"),
        ({"task": "apiapp.send_email", "args": ["a"], "delay": -1}, "$.delay"),
        (
            {"task": "apiapp.send_email", "args": ["a"], "delay": 1, "eta": "2099-01-01T00:00:00Z"},
            "delay or eta",
        ),
        ({"task": "apiapp.send_email", "args": ["a"], "eta": "2099-01-01T00:00:00"}, "timezone"),
        ({"task": "apiapp.send_email", "args": ["a"], "queue": "nope"}, "not declared"),
        ({"task": "apiapp.send_email", "args": ["a"], "bogus": 1}, "unknown field `bogus`"),
        ({"task": "apiapp.send_email", "args": "a"}, "Expected `array`"),
        ({"task": "apiapp.send_email", "args": ["a"], "name": ""}, "$.name"),
        ({"args": ["a"]}, "missing required field `task`"),
    ],
)
def test_bad_create_is_one_400_with_the_reason(client, body, why):
    r = client.post("/api/v1/tasks", json=body)
    assert why in error_of(r, 400)
    assert client.get("/api/v1/queues/emails").json()["ready"] == 0


def test_bad_bodies(client):
    assert "not valid JSON" in error_of(
        client.post("/api/v1/tasks", content=b"{", headers={"content-type": "application/json"}),
        400,
    )
    error_of(
        client.post("/api/v1/tasks", content=b"[]", headers={"content-type": "application/json"}),
        400,
    )
    error_of(
        client.post("/api/v1/tasks", content=b"x", headers={"content-type": "text/plain"}), 415
    )
    big = b'{"task": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    error_of(
        client.post("/api/v1/tasks", content=big, headers={"content-type": "application/json"}), 413
    )
    deep = b'{"task": "apiapp.send_email", "args": [' + b"[" * 200 + b"]" * 200 + b"]}"
    r = client.post("/api/v1/tasks", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_bad_path_and_query_parameters(client):
    assert "control" in error_of(client.get("/api/v1/queues/emails/tasks/a%00b"), 400)
    assert "limit" in error_of(client.get("/api/v1/queues/emails/dead?limit=-1"), 400)
    error_of(client.get("/api/v1/queues/emails/dead?limit=10001"), 400)
    error_of(client.get("/api/v1/queues/nope/tasks/x"), 404)


def test_dead_letters_list_requeue_and_delete(app, client):
    ids = [create(client, args=["boom"]).json()["id"] for _ in range(3)]
    run_until_idle(app)
    dead = client.get("/api/v1/queues/emails/dead").json()["dead"]
    assert sorted(d["id"] for d in dead) == sorted(ids)
    assert "mail server said no" in dead[0]["error"] and "Traceback" in dead[0]["traceback"]
    assert dead[0]["task"] == "apiapp.send_email" and dead[0]["args"] == ["boom"]
    assert len(client.get("/api/v1/queues/emails/dead?limit=1").json()["dead"]) == 1
    got = client.get(f"/api/v1/queues/emails/tasks/{ids[0]}").json()
    assert got["state"] == "dead" and "mail server said no" in got["error"]

    assert client.post(f"/api/v1/queues/emails/dead/{ids[0]}/requeue").json() == {"count": 1}
    assert client.get(f"/api/v1/queues/emails/tasks/{ids[0]}").json()["state"] == "ready"
    # a task that is not dead is not a dead letter
    assert "not a dead letter" in error_of(
        client.post(f"/api/v1/queues/emails/dead/{ids[0]}/requeue"), 404
    )
    error_of(client.delete(f"/api/v1/queues/emails/dead/{ids[0]}"), 404)
    assert client.delete(f"/api/v1/queues/emails/dead/{ids[1]}").json() == {"count": 1}
    error_of(client.delete(f"/api/v1/queues/emails/dead/{ids[1]}"), 404)
    assert client.post("/api/v1/queues/emails/dead/requeue").json() == {"count": 1}
    assert client.get("/api/v1/queues/emails/dead").json()["dead"] == []
    assert client.get("/api/v1/queues/emails").json()["ready"] == 2


def test_metrics_and_profiles(app, client):
    create(client, args=["a@example.com"])
    create(client, args=["boom"])
    run_until_idle(app)
    [m] = client.get("/api/v1/metrics").json()["metrics"]
    assert (m["task"], m["count"], m["failures"]) == ("apiapp.send_email", 2, 1)
    [p] = client.get("/api/v1/profiles").json()["profiles"]
    assert p["runs"] == 2 and p["failure_rate"] == 0.5
    assert p["wall_avg"] == pytest.approx(m["wall_total"] / 2)


def test_created_tasks_run(app, client):
    seen = []

    @app.task(queue="reports", name="apiapp.report")
    def report(n: int) -> None:
        seen.append(n)

    for n in range(3):
        assert (
            client.post("/api/v1/tasks", json={"task": "apiapp.report", "args": [n]}).status_code
            == 201
        )
    run_until_idle(app)
    assert sorted(seen) == [0, 1, 2]


def test_concurrent_creates_are_all_stored(app, client):
    """Creates from many clients at once all land (the server's loop broker is shared)."""
    import httpx

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
            rs = await asyncio.gather(
                *(
                    c.post("/api/v1/tasks", json={"task": "apiapp.send_email", "args": [f"{i}@x"]})
                    for i in range(40)
                )
            )
        return [r.status_code for r in rs]

    assert client.portal.call(burst) == [201] * 40
    assert client.get("/api/v1/queues/emails").json()["ready"] == 40
