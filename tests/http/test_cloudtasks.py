"""The official google-cloud-tasks client (REST transport), pointed at a live offload
server (uvicorn on a loopback port) on every broker, runs every queue and task method the
surface serves; its HTTP-target tasks reach a local receiver with the documented headers."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time

import pytest
import uvicorn
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud import tasks_v2
from google.oauth2.credentials import Credentials
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from standardwebhooks.webhooks import Webhook

from offload import App, Retry
from offload.http import create_app
from offload.testing import run_until_idle

from .test_push import SECRET, Receiver

TOKEN = "ct-token"
PARENT = "projects/acme/locations/europe-west1"


class Server:
    """``create_app(app)`` under uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, app: App) -> None:
        self.asgi = create_app(app, tokens=[TOKEN])
        self.port = 0

    def __enter__(self) -> Server:
        config = uvicorn.Config(self.asgi, host="127.0.0.1", port=0, log_level="error")
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(15)


def client_for(port: int, token: str = TOKEN) -> tasks_v2.CloudTasksClient:
    return tasks_v2.CloudTasksClient(
        transport="rest",
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{port}"),
        credentials=Credentials(token=token),
    )


@pytest.fixture
def app(broker_url, monkeypatch):
    monkeypatch.setenv("OFFLOAD_PUSH_SECRET", SECRET)
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "127.0.0.0/8")
    a = App("ctapp", broker=broker_url)
    a.queue("declared", rate="5/s", max_concurrent=3, retry=Retry(limit=4))
    yield a
    a.close()


@pytest.fixture
def server(app):
    with Server(app) as s:
        yield s


@pytest.fixture
def client(server):
    return client_for(server.port)


def qpath(qid: str) -> str:
    return f"{PARENT}/queues/{qid}"


def test_queue_methods(client, app):
    q = client.create_queue(
        parent=PARENT,
        queue=tasks_v2.Queue(
            name=qpath("mail"),
            rate_limits=tasks_v2.RateLimits(
                max_dispatches_per_second=20, max_burst_size=7, max_concurrent_dispatches=4
            ),
            retry_config=tasks_v2.RetryConfig(
                max_attempts=5,
                max_retry_duration=duration_pb2.Duration(seconds=600),
                min_backoff=duration_pb2.Duration(nanos=500_000_000),
                max_backoff=duration_pb2.Duration(seconds=60),
                max_doublings=3,
            ),
        ),
    )
    assert q.name == qpath("mail") and q.state == tasks_v2.Queue.State.RUNNING
    assert q.rate_limits.max_dispatches_per_second == 20
    assert q.rate_limits.max_burst_size == 7 and q.rate_limits.max_concurrent_dispatches == 4
    rc = q.retry_config
    assert (rc.max_attempts, rc.max_doublings) == (5, 3)
    assert rc.max_retry_duration.total_seconds() == 600 and rc.min_backoff.total_seconds() == 0.5
    # what the broker enforces now, and what the App's workers will retry by
    enforced = app.inspect("mail").policy
    assert (enforced.rate, enforced.bucket, enforced.max_concurrent) == (20.0, 7.0, 4)
    assert app.policy("mail").retry.limit == 4 and app.policy("mail").retry.age_limit == 600

    with pytest.raises(gexc.Conflict):
        client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=qpath("mail")))
    got = client.get_queue(name=qpath("mail"))
    assert got.rate_limits.max_concurrent_dispatches == 4
    with pytest.raises(gexc.NotFound):
        client.get_queue(name=qpath("nope"))

    names = [x.name for x in client.list_queues(parent=PARENT)]
    assert qpath("mail") in names and qpath("declared") in names and qpath("default") in names
    paged = client.list_queues(request={"parent": PARENT, "page_size": 1})
    assert sorted(x.name for x in paged) == sorted(names), "pages must cover every queue"

    patched = client.update_queue(
        queue=tasks_v2.Queue(
            name=qpath("mail"), rate_limits=tasks_v2.RateLimits(max_dispatches_per_second=2)
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["rate_limits.max_dispatches_per_second"]),
    )
    assert patched.rate_limits.max_dispatches_per_second == 2
    assert patched.rate_limits.max_concurrent_dispatches == 4, "outside the mask: unchanged"
    assert app.inspect("mail").policy.rate == 2.0
    with pytest.raises(gexc.BadRequest):
        client.update_queue(
            queue=tasks_v2.Queue(name=qpath("mail")),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        )

    assert client.pause_queue(name=qpath("mail")).state == tasks_v2.Queue.State.PAUSED
    assert app.inspect("mail").paused
    assert client.resume_queue(name=qpath("mail")).state == tasks_v2.Queue.State.RUNNING
    app.push("mail", "http://127.0.0.1:9/x", body=b"x")
    app.push("mail", "http://127.0.0.1:9/y", body=b"y", delay=600)
    client.purge_queue(name=qpath("mail"))
    s = app.inspect("mail")
    assert (s.ready, s.scheduled) == (0, 0)

    client.delete_queue(name=qpath("mail"))
    with pytest.raises(gexc.NotFound):
        client.get_queue(name=qpath("mail"))
    assert app.inspect("mail" if "mail" in app.queues else "default").policy is not None
    assert "mail" not in app.queues
    with pytest.raises(gexc.BadRequest, match="default queue cannot be deleted"):
        client.delete_queue(name=qpath("default"))
    with pytest.raises(gexc.BadRequest):
        client.get_queue(name=qpath("bad$name"))


def test_task_methods(client, app):
    client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=qpath("hooks")))
    later = timestamp_pb2.Timestamp()
    later.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    t = client.create_task(
        request=tasks_v2.CreateTaskRequest(
            parent=qpath("hooks"),
            task=tasks_v2.Task(
                name=f"{qpath('hooks')}/tasks/order-42",
                schedule_time=later,
                dispatch_deadline=duration_pb2.Duration(seconds=30),
                http_request=tasks_v2.HttpRequest(
                    url="http://127.0.0.1:9/hook",
                    http_method=tasks_v2.HttpMethod.PUT,
                    headers={"Content-Type": "application/json"},
                    body=b'{"order": 42}',
                ),
            ),
            response_view=tasks_v2.Task.View.FULL,
        )
    )
    assert t.name == f"{qpath('hooks')}/tasks/order-42"
    assert t.http_request.url == "http://127.0.0.1:9/hook"
    assert t.http_request.http_method == tasks_v2.HttpMethod.PUT
    assert t.http_request.body == b'{"order": 42}'
    assert t.http_request.headers["Content-Type"] == "application/json"
    assert t.dispatch_deadline.total_seconds() == 30 and t.dispatch_count == 0
    assert abs(t.schedule_time.timestamp() - later.ToDatetime(dt.UTC).timestamp()) < 0.01
    with pytest.raises(gexc.Conflict):
        client.create_task(
            parent=qpath("hooks"),
            task=tasks_v2.Task(
                name=f"{qpath('hooks')}/tasks/order-42",
                http_request=tasks_v2.HttpRequest(url="http://127.0.0.1:9/hook"),
            ),
        )
    anon = client.create_task(
        parent=qpath("hooks"),
        task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(url="http://127.0.0.1:9/a")),
    )
    assert anon.name.startswith(f"{qpath('hooks')}/tasks/")
    basic = client.get_task(name=t.name)
    assert basic.http_request.body == b"", "the BASIC view leaves the body out"
    assert client.get_task(request={"name": t.name, "response_view": 2}).http_request.body
    names = [x.name for x in client.list_tasks(parent=qpath("hooks"))]
    assert sorted(names) == sorted([t.name, anon.name])
    paged = client.list_tasks(request={"parent": qpath("hooks"), "page_size": 1})
    assert sorted(x.name for x in paged) == sorted(names)

    ran = client.run_task(name=t.name)
    assert ran.schedule_time.timestamp() < time.time() + 1, "run makes it due now"
    client.delete_task(name=t.name)
    with pytest.raises(gexc.NotFound):
        client.get_task(name=t.name)
    with pytest.raises(gexc.NotFound):
        client.delete_task(name=t.name)
    with pytest.raises(gexc.Conflict):  # the name stays reserved for the dedup window
        client.create_task(
            parent=qpath("hooks"),
            task=tasks_v2.Task(
                name=f"{qpath('hooks')}/tasks/order-42",
                http_request=tasks_v2.HttpRequest(url="http://127.0.0.1:9/hook"),
            ),
        )
    with pytest.raises(gexc.BadRequest):
        client.create_task(
            parent=qpath("hooks"),
            task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(url="ftp://example.com/")),
        )
    with pytest.raises(gexc.NotFound):
        client.create_task(
            parent=qpath("absent"),
            task=tasks_v2.Task(http_request=tasks_v2.HttpRequest(url="http://x.example/")),
        )


def test_tasks_arrive_at_the_receiver_with_the_documented_headers(client, app):
    client.create_queue(
        parent=PARENT,
        queue=tasks_v2.Queue(
            name=qpath("deliver"),
            retry_config=tasks_v2.RetryConfig(
                max_attempts=3, min_backoff=duration_pb2.Duration(nanos=50_000_000)
            ),
        ),
    )
    with Receiver(lambda n: 500 if n == 0 else 200) as rx:
        t = client.create_task(
            parent=qpath("deliver"),
            task=tasks_v2.Task(
                name=f"{qpath('deliver')}/tasks/invoice-1",
                http_request=tasks_v2.HttpRequest(
                    url=f"{rx.url}/invoice", body=b"paid", headers={"X-App": "shop"}
                ),
            ),
        )
        run_until_idle(app, ["deliver"], timeout=30)
    assert [r["path"] for r in rx.requests] == ["/invoice", "/invoice"]
    for n, r in enumerate(rx.requests):
        h = r["headers"]
        assert r["method"] == "POST" and r["body"] == b"paid" and h["x-app"] == "shop"
        assert h["x-cloudtasks-queuename"] == "deliver"
        assert h["x-cloudtasks-taskname"] == "invoice-1"
        assert h["x-cloudtasks-taskretrycount"] == str(n)
        assert "x-cloudtasks-taskexecutioncount" in h and "x-cloudtasks-tasketa" in h
        Webhook(SECRET).verify(r["body"], h, json_parse=False)
    with pytest.raises(gexc.NotFound):  # delivered: acked, gone
        client.get_task(name=t.name)


def test_a_wrong_token_is_refused(server):
    """The server answers 401, on which the client's session tries to refresh the
    credentials it was given (a bare token cannot be refreshed) and gives up."""
    import httpx
    from google.auth.exceptions import RefreshError

    with pytest.raises((gexc.Unauthorized, RefreshError)):
        client_for(server.port, token="wrong").list_queues(parent=PARENT)
    r = httpx.get(f"http://127.0.0.1:{server.port}/v2/{PARENT}/queues")
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"


def test_raw_json_shapes(server):
    """What a client in another language sees: Google's error shape, enum names without
    enum-encoding=int, base64 bodies."""
    import httpx

    base = f"http://127.0.0.1:{server.port}/v2"
    h = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.get(f"{base}/{qpath('nope')}", headers=h)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == 404 and err["status"] == "NOT_FOUND" and "nope" in err["message"]
    r = httpx.post(f"{base}/{PARENT}/queues", headers=h, json={"name": qpath("raw")})
    assert r.status_code == 200 and r.json()["state"] == "RUNNING"
    body = base64.b64encode(b"\x00\xffbytes").decode()
    r = httpx.post(
        f"{base}/{qpath('raw')}/tasks",
        headers=h,
        json={
            "task": {"httpRequest": {"url": "https://example.com/x", "body": body}},
            "responseView": "FULL",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["httpRequest"]["httpMethod"] == "POST"
    assert r.json()["httpRequest"]["body"] == body
    r = httpx.post(f"{base}/{qpath('raw')}/tasks", headers=h, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = httpx.put(f"{base}/{qpath('raw')}", headers=h)
    assert r.status_code == 405


def test_queue_settings_are_stored_in_the_broker_and_survive_a_restart(app):
    """What survives a restart, as docs/http.md says: a queue made through the surface is
    stored in the broker with its rate limits and its retryConfig (a retry override), so a
    new server (whose App never declared it) finds it with them. A retryConfig patched on
    a queue the App declares is stored too and wins over the App's declaration after a
    restart; a queue made without a retryConfig shows the default retry policy."""
    import httpx

    h = {"Authorization": f"Bearer {TOKEN}"}
    made = {
        "name": qpath("made"),
        "rateLimits": {"maxDispatchesPerSecond": 7, "maxConcurrentDispatches": 2},
        "retryConfig": {"maxAttempts": 9, "minBackoff": "2s", "maxDoublings": 3},
    }
    with Server(app) as s:
        base = f"http://127.0.0.1:{s.port}/v2"
        assert httpx.post(f"{base}/{PARENT}/queues", headers=h, json=made).status_code == 200
        patched = httpx.patch(
            f"{base}/{qpath('declared')}",
            params={"updateMask": "retryConfig.maxAttempts"},
            headers=h,
            json={"retryConfig": {"maxAttempts": 11}},
        )
        assert patched.status_code == 200 and patched.json()["retryConfig"]["maxAttempts"] == 11
        before = httpx.get(f"{base}/{qpath('made')}", headers=h).json()
    assert before["retryConfig"]["maxAttempts"] == 9
    assert before["retryConfig"]["minBackoff"] == "2s"

    # a restart: a new App (the same declarations, nothing of "made") on the same broker
    again = App("ctapp", broker=app.broker_url)
    again.queue("declared", rate="5/s", max_concurrent=3, retry=Retry(limit=4))
    try:
        with Server(again) as s:
            base = f"http://127.0.0.1:{s.port}/v2"
            after = httpx.get(f"{base}/{qpath('made')}", headers=h).json()
            declared = httpx.get(f"{base}/{qpath('declared')}", headers=h).json()
            plain = {"name": qpath("plain")}
            plain = httpx.post(f"{base}/{PARENT}/queues", headers=h, json=plain).json()
    finally:
        again.close()
    assert after["rateLimits"]["maxDispatchesPerSecond"] == 7
    assert after["rateLimits"]["maxConcurrentDispatches"] == 2
    assert after["retryConfig"] == before["retryConfig"], "the stored retry override"
    assert after["retryConfig"]["maxAttempts"] == 9 and after["retryConfig"]["maxDoublings"] == 3
    assert declared["retryConfig"]["maxAttempts"] == 11, "the override, not Retry(limit=4)"
    assert plain["retryConfig"]["maxAttempts"] == 4  # RetryPolicy's default limit 3, + 1
