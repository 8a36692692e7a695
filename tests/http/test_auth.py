"""Deny by default: every route needs a bearer token or the login cookie (plus a CSRF token
on browser writes); /healthz and the login form are the only public doors."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from offload import App
from offload.errors import ConfigError
from offload.http import create_app
from offload.http.auth import COOKIE_NAME, make_session
from offload.http.limits import FailureLimiter, client_key

TOKEN = "s3cret-token"
#: the parts this file tests (the others are tested by their own files)
PARTS = ("api", "metrics")


def make_app(url: str) -> App:
    app = App("authapp", broker=url)
    app.queue("emails")

    @app.task(queue="emails", name="authapp.hello")
    def hello(who: str) -> None:
        return None

    return app


@pytest.fixture
def client(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    with TestClient(
        create_app(app, tokens=[TOKEN, "other"], parts=PARTS), follow_redirects=False
    ) as c:
        yield c
    app.close()


def is_json_error(r, code: int) -> bool:
    body = r.json()
    return r.status_code == code and body["error"]["code"] == code and body["error"]["message"]


def test_no_token_configured_refuses_to_build(tmp_path, monkeypatch):
    monkeypatch.delenv("OFFLOAD_API_TOKENS", raising=False)
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(ConfigError, match="OFFLOAD_API_TOKENS"):
        create_app(app)
    monkeypatch.setenv("OFFLOAD_API_TOKENS", " , ")
    with pytest.raises(ConfigError, match="no API token"):
        create_app(app)
    monkeypatch.setenv("OFFLOAD_API_TOKENS", "a, b")
    with TestClient(create_app(app, parts=PARTS)) as c:
        assert c.get("/api/v1/queues", headers={"Authorization": "Bearer b"}).status_code == 200


def test_healthz_is_public(client):
    assert client.get("/healthz").json() == {"ok": True}


@pytest.mark.parametrize("path", ["/api/v1/queues", "/metrics", "/no/such/route", "/"])
def test_without_or_with_a_wrong_token_is_a_json_401(client, path):
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic " + TOKEN},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        r = client.get(path, headers=headers)
        assert is_json_error(r, 401), (path, headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code != 401


def test_a_browser_without_a_session_is_sent_to_the_login_form(client):
    r = client.get("/queues/emails?x=1", headers={"Accept": "text/html"})
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=/queues/emails%3Fx%3D1"


def login(client, token=TOKEN, next_="/"):
    return client.post("/login", data={"token": token, "next": next_})


def test_login_sets_an_httponly_strict_cookie_that_opens_every_route(client):
    r = login(client, next_="/api/v1/queues")
    assert r.status_code == 303 and r.headers["location"] == "/api/v1/queues"
    cookie = r.headers["set-cookie"]
    assert COOKIE_NAME in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie  # the cookie never carries the token itself
    assert client.get("/api/v1/queues").status_code == 200


def test_a_wrong_login_sets_no_cookie(client):
    r = login(client, token="nope")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?error=token")
    assert "set-cookie" not in r.headers
    assert is_json_error(client.get("/api/v1/queues"), 401)


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil"])
def test_login_never_redirects_off_site(client, target):
    assert login(client, next_=target).headers["location"] == "/"


def test_forged_expired_or_revoked_cookies_are_refused(client, tmp_path):
    for value in ("garbage", "1.2.3", make_session("not-a-token"), make_session(TOKEN, now=0)):
        client.cookies.set(COOKIE_NAME, value)
        assert is_json_error(client.get("/api/v1/queues"), 401), value
    # a session made with a token the server no longer accepts
    client.cookies.set(COOKIE_NAME, make_session("removed-token"))
    assert client.get("/api/v1/queues").status_code == 401


def test_logout_drops_the_cookie(client):
    login(client)
    r = client.post("/logout")
    assert r.status_code == 303 and COOKIE_NAME in r.headers["set-cookie"]
    client.cookies.clear()
    assert client.get("/api/v1/queues").status_code == 401


def csrf_of(client) -> str:
    """The CSRF token for the client's session, as a page would embed it."""
    from offload.http.auth import _mac, session_token

    cookie = client.cookies[COOKIE_NAME]
    ctx = client.app.state.offload
    return _mac(session_token(ctx, cookie), "csrf", cookie)


def test_cookie_writes_need_the_csrf_token(client):
    login(client)
    path = "/api/v1/queues/emails/pause"
    r = client.post(path)
    assert is_json_error(r, 403) and "CSRF" in r.json()["error"]["message"]
    assert is_json_error(client.post(path, headers={"X-CSRF-Token": "wrong"}), 403)
    assert client.get("/api/v1/queues/emails").json()["paused"] is False
    token = csrf_of(client)
    assert client.post(path, headers={"X-CSRF-Token": token}).status_code == 200
    assert client.get("/api/v1/queues/emails").json()["paused"] is True
    # a urlencoded form carries it as a field, and the handler still reads the body
    r = client.post("/api/v1/queues/emails/resume", data={"csrf_token": token})
    assert r.status_code == 200
    assert client.get("/api/v1/queues/emails").json()["paused"] is False
    # a cross-site page is refused even with the token
    r = client.post(path, headers={"X-CSRF-Token": token, "Origin": "https://evil.example"})
    assert is_json_error(r, 403)


def test_bearer_writes_need_no_csrf_token(client):
    r = client.post("/api/v1/queues/emails/pause", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200


def test_csrf_token_helper_matches_what_the_middleware_accepts(client):
    from starlette.requests import Request

    from offload.http.auth import csrf_token

    login(client)
    cookie = client.cookies[COOKIE_NAME]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"cookie", f"{COOKIE_NAME}={cookie}".encode())],
        "app": client.app,
    }
    assert re.fullmatch(r"[0-9a-f]{64}", csrf_token(Request(scope)))
    assert csrf_token(Request(scope)) == csrf_of(client)


def test_no_auth_lets_everything_through(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    with TestClient(create_app(app, tokens=[], no_auth=True, parts=PARTS)) as c:
        assert c.get("/api/v1/queues").status_code == 200


def test_every_route_of_every_part_is_denied_without_a_right_token(tmp_path):
    """Whatever routes the parts mount (now or later), only the public doors open without
    a token; a wrong token is a 401; the right one passes the auth layer."""
    import re as _re

    from starlette.routing import Mount, Route

    from offload.http.auth import PUBLIC_PATHS, PUBLIC_PREFIXES

    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    # this test sends a wrong token to every route: not a guesser to slow down
    server = create_app(app, tokens=[TOKEN], auth_limit=FailureLimiter(burst=10_000))
    checked = 0
    with TestClient(server, follow_redirects=False) as c:
        for route in server.routes:
            if isinstance(route, Mount):
                assert route.path + "/" in PUBLIC_PREFIXES, route.path
                continue
            assert isinstance(route, Route)
            path = _re.sub(
                r"{(\w+)(:\w+)?}", lambda m: "emails" if m[1] == "queue" else "x", route.path
            )
            for method in sorted((route.methods or set()) - {"HEAD"}):
                if route.path in PUBLIC_PATHS:
                    continue
                for headers in ({}, {"Authorization": "Bearer wrong"}):
                    r = c.request(method, path, headers=headers)
                    assert is_json_error(r, 401), (method, path, headers, r.status_code)
                r = c.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code not in (401, 403), (method, path, r.status_code, r.text)
                checked += 1
    assert checked >= 20
    app.close()


# -- slowing down a token guesser --------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited_client(tmp_path, parts=PARTS, burst=3, refill=60.0):
    clock = FakeClock()
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    limit = FailureLimiter(burst=burst, refill_seconds=refill, clock=clock)
    server = create_app(app, tokens=[TOKEN], parts=parts, auth_limit=limit)
    return app, server, clock


def test_wrong_bearer_tokens_past_the_allowance_get_a_json_429_with_retry_after(tmp_path):
    app, server, clock = limited_client(tmp_path)
    right, wrong = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer x"}
    with TestClient(server) as c:
        for _ in range(3):
            assert is_json_error(c.get("/api/v1/queues", headers=wrong), 401)
        r = c.get("/api/v1/queues", headers=wrong)
        assert is_json_error(r, 429), r.text
        assert r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
        assert r.headers["retry-after"] == "60"
        assert "try again in 60 s" in r.json()["error"]["message"]
        # while it waits, even the right token is not looked at: a guess teaches nothing
        assert c.get("/api/v1/queues", headers=right).status_code == 429
        clock.now += 30
        assert c.get("/api/v1/queues", headers=right).headers["retry-after"] == "30"
        # one failure earned back every refill period; the right token works again
        clock.now += 30
        assert c.get("/api/v1/queues", headers=right).status_code == 200
        assert c.get("/metrics", headers={"Authorization": "Bearer y"}).status_code == 401
        assert c.get("/metrics", headers=right).status_code == 429
        # a request without credentials, and the public doors, are not slowed
        assert c.get("/healthz").status_code == 200
        assert is_json_error(c.get("/api/v1/queues"), 401)
    app.close()


def test_another_address_is_not_slowed_by_a_guesser(tmp_path):
    app, server, _ = limited_client(tmp_path, burst=1)
    wrong = {"Authorization": "Bearer x"}
    with TestClient(server, client=("203.0.113.9", 1000)) as guesser:
        guesser.get("/api/v1/queues", headers=wrong)
        assert guesser.get("/api/v1/queues", headers=wrong).status_code == 429
        other = TestClient(server, client=("203.0.113.10", 1000))
        ok = other.get("/api/v1/queues", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
    app.close()


def test_malformed_authorization_is_not_counted_as_a_guess(tmp_path):
    app, server, _ = limited_client(tmp_path, burst=1)
    with TestClient(server) as c:
        for bad in ("Basic abc", "Bearer ", "token"):
            assert c.get("/api/v1/queues", headers={"Authorization": bad}).status_code == 401
        r = c.get("/api/v1/queues", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
    app.close()


def test_the_login_form_slows_a_guesser_and_says_how_long_to_wait(tmp_path):
    app, server, clock = limited_client(tmp_path, parts=("api", "dashboard"))
    with TestClient(server, follow_redirects=False) as c:
        for _ in range(3):
            r = login(c, token="nope")
            assert r.headers["location"].startswith("/login?error=token")
        r = login(c)  # the right token, but too late: not looked at, no cookie
        assert r.status_code == 303 and r.headers["location"].startswith("/login?error=limited")
        assert r.headers["retry-after"] == "60" and "set-cookie" not in r.headers
        page = c.get(r.headers["location"])
        assert page.status_code == 429 and page.headers["retry-after"] == "60"
        assert "Too many wrong tokens were tried from your address. Wait 60 seconds" in page.text
        clock.now += 60
        page = c.get("/login?error=limited")
        assert page.status_code == 200 and "Too many" not in page.text
        r = login(c)
        assert r.headers["location"] == "/" and COOKIE_NAME in r.headers["set-cookie"]
    app.close()


def test_the_default_allows_ten_wrong_tokens_then_slows_down(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'b.db'}")
    with TestClient(create_app(app, tokens=[TOKEN], parts=PARTS)) as c:
        codes = [
            c.get("/api/v1/queues", headers={"Authorization": f"Bearer w{i}"}).status_code
            for i in range(11)
        ]
    assert codes == [401] * 10 + [429]
    app.close()


def test_the_limiter_keys_ipv6_by_its_64_and_forgets_the_oldest_addresses():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "unknown"
    clock = FakeClock()
    limit = FailureLimiter(burst=1, refill_seconds=10, max_clients=2, clock=clock)
    for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        limit.failed(host)
    assert limit.wait("192.0.2.1") == 0  # forgotten: memory stays bounded
    assert limit.wait("192.0.2.3") == 10
    with pytest.raises(ValueError, match="burst"):
        FailureLimiter(burst=0)
