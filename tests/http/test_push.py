"""Push delivery on every broker, to real receivers on loopback (a uvicorn server in a
thread, or a bare socket that counts connections): the documented headers, Standard
Webhooks signatures the standardwebhooks package verifies, retries by status, Retry-After,
the dispatch deadline, and the SSRF guard making no connection at all."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from offload import App, Retry
from offload.errors import BadArguments
from offload.testing import run_until_idle

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes


class Receiver:
    """A uvicorn server on 127.0.0.1 in a thread: records each request (method, path,
    headers, body, arrival time) and answers with ``respond(n)`` for the n-th one (0-based):
    a status, or (status, headers), or (status, headers, body), or an awaitable that hangs.
    With ``tls`` (a PEM file holding the key and the certificate chain) it serves HTTPS;
    it closes a connection idle for ``keep_alive`` seconds."""

    def __init__(
        self,
        respond: Callable[[int], Any] = lambda n: 200,
        host: str = "127.0.0.1",
        tls: str | None = None,
        keep_alive: float = 5.0,
    ):
        self.requests: list[dict[str, Any]] = []
        self.respond = respond
        self.host = host
        self.tls = tls
        self.keep_alive = keep_alive
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        n = len(self.requests)
        self.requests.append(
            {
                "method": scope["method"],
                "path": scope["path"],
                "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                "body": body,
                "at": time.time(),
                "client": tuple(scope["client"]),
                "names": [k.decode().lower() for k, _ in scope["headers"]],
            }
        )
        answer = self.respond(n)
        if asyncio.iscoroutine(answer):
            answer = await answer
        status, headers, content = (
            (*answer, b"ok")[:3] if isinstance(answer, tuple) else (answer, {}, b"ok")
        )
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def __enter__(self) -> Receiver:
        tls = {"ssl_certfile": self.tls, "ssl_keyfile": self.tls} if self.tls else {}
        config = uvicorn.Config(
            self,
            host=self.host,
            port=0,
            log_level="error",
            lifespan="on",
            timeout_keep_alive=self.keep_alive,
            **tls,
        )
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)


class Listener:
    """A bare TCP listener that only counts the connections made to it."""

    def __init__(self, host: str = "127.0.0.1", family: int = socket.AF_INET):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv("OFFLOAD_PUSH_SECRET", SECRET)
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "127.0.0.0/8")
    monkeypatch.delenv("OFFLOAD_PUSH_SECRETS", raising=False)
    return SECRET


@pytest.fixture
def app(broker_url):
    a = App("pushapp", broker=broker_url)
    a.queue("hooks", retry=Retry(limit=5, min_backoff=0.05, max_backoff=0.2))
    yield a
    a.close()


def test_delivery_headers_and_signature(app, secret):
    with Receiver() as rx:
        h = app.push(
            "hooks",
            f"{rx.url}/hook?x=1",
            body=b'{"order": 7}',
            headers={
                "Content-Type": "application/json",
                "X-Trace": "abc",
                "x-cloudtasks-queuename": "forged",
                "Webhook-Id": "forged",
            },
            name="order-7",
        )
        app.push("hooks", f"{rx.url}/plain", body="text body", method="PUT")
        stats = run_until_idle(app, ["hooks"], timeout=30)
    assert len(rx.requests) == 2, rx.requests
    by_path = {r["path"]: r for r in rx.requests}
    r = by_path["/hook"]
    assert r["method"] == "POST" and r["body"] == b'{"order": 7}'
    hd = r["headers"]
    assert hd["content-type"] == "application/json" and hd["x-trace"] == "abc"
    assert hd["x-cloudtasks-queuename"] == "hooks"
    assert hd["x-cloudtasks-taskname"] == "order-7"
    assert hd["x-cloudtasks-taskretrycount"] == "0"
    assert hd["x-cloudtasks-taskexecutioncount"] == "0"
    assert abs(float(hd["x-cloudtasks-tasketa"]) - time.time()) < 60
    assert hd["host"] == f"127.0.0.1:{rx.port}"
    # a task's own value for a header offload sets is dropped, not sent beside offload's
    assert r["names"].count("x-cloudtasks-queuename") == r["names"].count("webhook-id") == 1
    assert hd["webhook-id"] == h.id
    wh = Webhook(secret)
    for req in rx.requests:
        wh.verify(req["body"], req["headers"], json_parse=False)
        with pytest.raises(WebhookVerificationError):
            wh.verify(req["body"] + b"tampered", req["headers"], json_parse=False)
    plain = by_path["/plain"]
    assert plain["method"] == "PUT" and plain["body"] == b"text body"
    assert plain["headers"]["x-cloudtasks-taskname"] == plain["headers"]["webhook-id"]
    assert stats.succeeded == 2, stats


def test_fails_twice_then_succeeds_with_retry_counts(app, secret):
    with Receiver(lambda n: 500 if n < 2 else 204) as rx:
        app.push("hooks", f"{rx.url}/flaky", body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    counts = [r["headers"]["x-cloudtasks-taskretrycount"] for r in rx.requests]
    assert counts == ["0", "1", "2"], counts
    ids = {r["headers"]["webhook-id"] for r in rx.requests}
    assert len(ids) == 1, "webhook-id must stay the same across retries"
    for req in rx.requests:
        Webhook(secret).verify(req["body"], req["headers"], json_parse=False)
    assert app.stats("hooks").dead == 0


def test_redirect_is_not_followed_and_fails(app, secret):
    app.queue("hooks", retry=Retry(limit=1, min_backoff=0.01, max_backoff=0.01))
    with Receiver(lambda n: (302, {"Location": "/elsewhere"})) as rx:
        app.push("hooks", f"{rx.url}/moved", body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    assert [r["path"] for r in rx.requests] == ["/moved", "/moved"], rx.requests
    dead = app.dead_letters("hooks")
    assert len(dead) == 1 and "HTTP 302" in dead[0].error, dead


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(app, secret, status):
    with Receiver(lambda n: (status, {"Retry-After": "1"}) if n == 0 else 200) as rx:
        app.push("hooks", f"{rx.url}/busy", body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    assert len(rx.requests) == 2, rx.requests
    gap = rx.requests[1]["at"] - rx.requests[0]["at"]
    # the queue's own backoff is 0.05 s: only Retry-After explains a second's wait
    assert 0.9 <= gap < 5.0, f"second attempt {gap:.2f}s after the first; Retry-After said 1s"


def test_hanging_receiver_hits_the_dispatch_deadline(app, secret):
    app.queue("hooks", retry=Retry(limit=0))

    async def hang() -> int:
        await asyncio.sleep(30)
        return 200

    with Receiver(lambda n: hang()) as rx:
        app.push("hooks", f"{rx.url}/slow", body=b"x", deadline=0.5)
        t0 = time.monotonic()
        run_until_idle(app, ["hooks"], timeout=30)
        took = time.monotonic() - t0
    assert len(rx.requests) == 1
    dead = app.dead_letters("hooks")
    assert len(dead) == 1 and "dispatch deadline" in dead[0].error, dead
    assert took < 10, f"the worker waited {took:.1f}s for a 0.5s deadline"


def test_connection_refused_retries_per_policy(app, secret):
    app.queue("hooks", retry=Retry(limit=2, min_backoff=0.01, max_backoff=0.01))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    app.push("hooks", f"http://127.0.0.1:{port}/x", body=b"x")
    run_until_idle(app, ["hooks"], timeout=30)
    dead = app.dead_letters("hooks")
    assert len(dead) == 1 and dead[0].attempts == 3, dead
    assert "ConnectError" in dead[0].error, dead[0].error


def test_no_secret_dead_letters_with_the_reason(app, secret, monkeypatch):
    monkeypatch.delenv("OFFLOAD_PUSH_SECRET")
    with Receiver() as rx:
        app.push("hooks", f"{rx.url}/x", body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    assert rx.requests == []
    dead = app.dead_letters("hooks")
    assert len(dead) == 1 and "no push secret" in dead[0].error, dead


def test_per_queue_secret(app, secret, monkeypatch):
    other = "whsec_" + "c2VjcmV0LW9mLXRoZS1ob29rcy1xdWV1ZQ=="
    monkeypatch.setenv("OFFLOAD_PUSH_SECRETS", f"hooks={other}")
    with Receiver() as rx:
        app.push("hooks", f"{rx.url}/x", body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    (req,) = rx.requests
    Webhook(other).verify(req["body"], req["headers"], json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req["body"], req["headers"], json_parse=False)


def test_ssrf_corpus_makes_no_connection(app, secret, monkeypatch):
    """Loopback, private, link-local/metadata, a name resolving to loopback, decimal and
    IPv6-mapped forms, and a redirect from an allowed receiver to loopback: each is
    dead-lettered with the guard's reason, and the loopback listeners see 0 connections."""
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "127.0.0.2/32")
    app.queue("hooks", retry=Retry(limit=0))
    v4 = Listener("127.0.0.1")
    try:
        v6 = Listener("::1", socket.AF_INET6)
    except OSError:
        v6 = None
    try:
        p = v4.port
        corpus = [
            f"http://127.0.0.1:{p}/a",
            f"http://localhost:{p}/b",
            f"http://2130706433:{p}/c",
            f"http://0x7f000001:{p}/d",
            f"http://127.1:{p}/e",
            f"http://[::ffff:127.0.0.1]:{p}/f",
            f"http://[::1]:{v6.port if v6 else p}/g",
            f"http://10.0.0.1:{p}/h",
            f"http://192.168.1.1:{p}/i",
            f"http://169.254.169.254:{p}/latest/meta-data/",
            f"http://[fe80::1]:{p}/j",
            f"http://224.0.0.1:{p}/k",
            f"http://0.0.0.0:{p}/l",
        ]
        for url in corpus:
            app.push("hooks", url, body=b"x")
        # an allowed receiver (127.0.0.2) redirecting to the loopback listener
        with Receiver(lambda n: (307, {"Location": f"http://127.0.0.1:{p}/r"}), "127.0.0.2") as rx:
            app.push("hooks", f"{rx.url}/redirect", body=b"x")
            run_until_idle(app, ["hooks"], timeout=60)
        assert len(rx.requests) == 1, "the allowed receiver is reached once"
        time.sleep(0.3)
        assert v4.connections == 0, f"{v4.connections} connections reached 127.0.0.1"
        assert v6 is None or v6.connections == 0, "a connection reached ::1"
        dead = {d.args[0]["url"]: d.error for d in app.dead_letters("hooks")}
        assert len(dead) == len(corpus) + 1
        for url in corpus:
            assert "SSRF guard" in dead[url], (url, dead[url])
        assert "HTTP 307" in dead[f"{rx.url}/redirect"]
    finally:
        v4.close()
        if v6 is not None:
            v6.close()


def test_push_checks_the_request_at_send(app):
    for bad in (
        dict(url="ftp://example.com/x"),
        dict(url="http://user:pw@example.com/x"),
        dict(url="http:///nohost"),
        dict(url="http://example.com/x", method="TRACE"),
        dict(url="http://example.com/x", headers={"Bad Header": "v"}),
        dict(url="http://example.com/x", headers={"X": "a\r\nInjected: 1"}),
        dict(url="http://example.com/x", body=b"x" * ((1 << 20) + 1)),
        dict(url="http://example.com/x", deadline=0),
    ):
        url = bad.pop("url")
        with pytest.raises(BadArguments):
            app.push("hooks", url, **bad)
    assert app.stats("hooks").ready == 0


def test_the_push_task_is_registered_by_every_app():
    assert "offload.push" in App("plain").tasks
