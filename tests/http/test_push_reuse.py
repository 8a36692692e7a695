"""What push deliveries reuse, and that reusing it keeps every guarantee: a name's resolved
addresses (judged again at every use, so a name that now resolves to loopback is refused
and a changed allow-list applies at once) and keep-alive connections (reused, never after
the server closed them, a response was cut short or a deadline interrupted them, and an
https connection only for the name its certificate was verified for)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
import trustme

from offload import App, Retry, push_pool
from offload import push as push_module
from offload.errors import Fail
from offload.testing import run_until_idle
from tests.http.test_push import SECRET, Listener, Receiver
from tests.http.test_push_tls import served_as

PUBLIC = "93.184.216.34"  # never connected to here: only judged


@pytest.fixture
def dns(monkeypatch):
    """A resolver whose answers the test sets: ``dns["name"] = ("addr", ...)``, or a list
    of such answers, one per lookup (the last one repeats); lookups are counted in
    ``dns["lookups"]``."""
    answers: dict = {"lookups": 0}

    async def resolve(host: str) -> tuple[str, ...]:
        answers["lookups"] += 1
        got = answers[host]
        if isinstance(got, list):
            return got.pop(0) if len(got) > 1 else got[0]
        return got

    monkeypatch.setattr(push_module, "_resolve", resolve)
    push_module._RESOLVED.clear()
    yield answers
    push_module._RESOLVED.clear()


async def test_a_cached_name_that_now_resolves_to_loopback_is_refused(dns):
    check = push_module._checked_address
    dns["hooks.test"] = (PUBLIC,)
    assert await check("hooks.test", (), now=100.0) == PUBLIC
    dns["hooks.test"] = ("127.0.0.1",)
    # within the TTL the answer judged before is the one used (and connected to)
    assert await check("hooks.test", (), now=100.0 + push_module.RESOLVE_TTL / 2) == PUBLIC
    assert dns["lookups"] == 1
    with pytest.raises(Fail, match=r"SSRF guard: 127\.0\.0\.1 is a loopback address"):
        await check("hooks.test", (), now=100.0 + push_module.RESOLVE_TTL + 0.1)
    assert dns["lookups"] == 2
    # a refused answer is not a pass later either: it is judged again at every use
    with pytest.raises(Fail, match="SSRF guard"):
        await check("hooks.test", (), now=100.0 + push_module.RESOLVE_TTL + 0.2)


async def test_a_cached_answer_is_judged_with_the_allow_list_of_the_moment(dns):
    check = push_module._checked_address
    dns["svc.internal"] = ("10.1.2.3",)
    allow = (ipaddress.ip_network("10.0.0.0/8"),)
    assert await check("svc.internal", allow, now=5.0) == "10.1.2.3"
    with pytest.raises(Fail, match=r"10\.1\.2\.3 is a private address"):
        await check("svc.internal", (), now=5.0)
    assert dns["lookups"] == 1


async def test_one_bad_answer_among_good_ones_refuses_the_name(dns):
    dns["mixed.test"] = (PUBLIC, "169.254.169.254")
    with pytest.raises(Fail, match="cloud metadata"):
        await push_module._checked_address("mixed.test", (), now=1.0)


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_PUSH_SECRET", SECRET)
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "127.0.0.0/8")
    monkeypatch.delenv("OFFLOAD_PUSH_SECRETS", raising=False)
    monkeypatch.delenv("OFFLOAD_PUSH_CA_BUNDLE", raising=False)
    a = App("reuseapp", broker=f"sqlite:///{tmp_path / 'b.db'}")
    a.queue("hooks", retry=Retry(limit=1, min_backoff=0.05, max_backoff=0.1))
    yield a
    a.close()


def test_a_name_rebound_to_loopback_gets_no_connection(app, dns, monkeypatch):
    """A name whose answer changes to a refused address once its cached answer expired:
    the deliveries are dead-lettered by the guard and the loopback listener sees nothing,
    though the worker still holds a keep-alive connection to the old address."""
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "127.0.0.2/32")
    monkeypatch.setattr(push_module, "RESOLVE_TTL", 1.0)
    app.queue("hooks", retry=Retry(limit=0))
    listener = Listener("127.0.0.1")
    try:
        with Receiver(host="127.0.0.2") as rx:
            dns["hooks.test"] = [("127.0.0.2",), ("127.0.0.1",)]
            for path in ("a", "b"):  # the second within the TTL: the cached answer
                app.push("hooks", f"http://hooks.test:{rx.port}/{path}", body=b"x")
            app.push("hooks", f"http://hooks.test:{rx.port}/c", body=b"x", delay=2.0)
            app.push("hooks", f"http://hooks.test:{listener.port}/d", body=b"x", delay=2.0)
            run_until_idle(app, ["hooks"], concurrency=1, timeout=30)
        assert [r["path"] for r in rx.requests] == ["/a", "/b"]
        assert len({r["client"] for r in rx.requests}) == 1, "one kept-alive connection"
        assert listener.connections == 0
        assert dns["lookups"] == 2
        dead = app.dead_letters("hooks")
        assert len(dead) == 2 and all("127.0.0.1 is a loopback" in d.error for d in dead)
    finally:
        listener.close()


def test_deliveries_reuse_keep_alive_connections(app):
    with Receiver() as rx:
        tf = app.get_task("offload.push")
        req = push_module.make_request(f"{rx.url}/k", b"x")
        tf.send_many([((req,), {}, {"queue": "hooks"}) for _ in range(40)])
        stats = run_until_idle(app, ["hooks"], concurrency=4, timeout=30)
    assert stats.succeeded == 40
    ports = {r["client"][1] for r in rx.requests}
    assert len(ports) <= 4, f"40 deliveries, 4 at a time, opened {len(ports)} connections"


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"Connection": "close"}),  # the server closes after answering
        (200, {}, b"x" * (push_module._RESPONSE_READ_LIMIT * 2)),  # not read to its end
    ],
    ids=["connection-close", "long-response"],
)
def test_a_connection_that_cannot_be_reused_is_not(app, answer):
    with Receiver(lambda n: answer) as rx:
        for i in range(6):
            app.push("hooks", f"{rx.url}/n{i}", body=b"x")
        stats = run_until_idle(app, ["hooks"], concurrency=1, timeout=30)
    assert stats.succeeded == 6 and app.stats("hooks").dead == 0, stats
    assert len({r["client"][1] for r in rx.requests}) == 6, "a connection was reused"


def test_a_connection_the_server_closed_while_idle_is_not_used(app):
    """The receiver closes connections idle for 0.2 s; deliveries 0.6 s apart each see
    that and open a new connection instead of failing on the closed one."""
    with Receiver(keep_alive=0.2) as rx:
        for i in range(3):
            app.push("hooks", f"{rx.url}/idle{i}", body=b"x", delay=0.6 * i)
        stats = run_until_idle(app, ["hooks"], concurrency=1, timeout=30)
    assert stats.succeeded == 3 and stats.retried == 0 and app.stats("hooks").dead == 0
    assert len({r["client"] for r in rx.requests}) == 3


async def test_an_interrupted_request_closes_its_connection():
    closed = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request, never answered
        if await reader.read() == b"":
            closed.set()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = push_pool.Pool()
    to = ("http", "127.0.0.1", port, "", None)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await pool.request(to, "GET", b"/", [(b"Host", b"x")], b"", None, 1024)
        await asyncio.wait_for(closed.wait(), 5)
        assert pool.idle(to) == 0
    finally:
        server.close()
        await pool.aclose()


def test_an_https_connection_is_only_reused_for_the_name_it_was_verified_for(
    app, tmp_path, dns, monkeypatch
):
    """Two names on one address, the certificate naming only the first: the second
    delivery must not ride the first's verified connection; its own handshake fails."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("OFFLOAD_PUSH_CA_BUNDLE", str(bundle))
    app.queue("hooks", retry=Retry(limit=0))
    dns["good.test"] = dns["other.test"] = ("127.0.0.1",)
    with Receiver(host="127.0.0.1", tls=served_as(ca, tmp_path, "good.test")) as rx:
        app.push("hooks", f"https://good.test:{rx.port}/a", body=b"x")
        app.push("hooks", f"https://other.test:{rx.port}/b", body=b"x", delay=0.3)
        run_until_idle(app, ["hooks"], concurrency=1, timeout=30)
    assert [r["path"] for r in rx.requests] == ["/a"]
    (dead,) = app.dead_letters("hooks")
    assert "'other.test' is not trusted" in dead.error, dead.error


def test_a_non_ascii_path_is_percent_encoded():
    scheme, host, port, authority, target = push_module._split("http://h.test:81/ä/b?q=ü%20")
    assert (scheme, host, port, authority) == ("http", "h.test", 81, b"h.test:81")
    assert target == b"/%C3%A4/b?q=%C3%BC%20"


def test_an_allowed_ipv6_target_is_delivered(app, monkeypatch):
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "::1/128")
    try:
        rx = Receiver(host="::1").__enter__()
    except (OSError, AssertionError):
        pytest.skip("no IPv6 loopback here")
    try:
        app.push("hooks", f"http://[::1]:{rx.port}/six", body=b"x")
        stats = run_until_idle(app, ["hooks"], timeout=30)
    finally:
        rx.__exit__(None, None, None)
    assert stats.succeeded == 1, app.dead_letters("hooks")
    assert rx.requests[0]["headers"]["host"] == f"[::1]:{rx.port}"
